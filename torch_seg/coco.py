"""One COCO instances file for a whole run, built from the result.json records (`results.result_record`).

Images are numbered 1, 2, ... in the order given, categories 1, 2, ... by the prompts' phrases in order of
first appearance, annotations 1, 2, ... image by image in detection order: the same records give the same
file. Each annotation carries the mask as COCO compressed RLE, the detector's box as xywh, the mask's area
and the box score, so the file loads with `pycocotools.coco.COCO` and its `annotations` list serves
`COCO.loadRes` / `COCOeval` as detection results.

Several workers each write such a file for their share (`worker_coco_path`); `merge_coco_files` makes one of
them with fresh ids (scripts/merge_coco.py).
"""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path, PurePosixPath

from torch_seg.errors import UserError
from torch_seg.prompts import parse_prompt
from torch_seg.results import RANDOM_WEIGHTS_NOTE, write_json

COCO_DESCRIPTION = "vit-sam2-lab text-prompted segmentation (GroundingDINO or CLIPSeg boxes, SAM 2.1 masks)"


def _file_name(source: str) -> str:
    """The image's file name (for a URL, its path's last segment)."""
    if source.startswith(("http://", "https://")):
        source = urllib.parse.urlparse(source).path
    return PurePosixPath(source.replace("\\", "/")).name or "image"


def _phrase_of(detection: dict, phrases: list[str]) -> str:
    """The prompt phrase a detection matched. Records written before detections carried `phrase` have only the
    label, which is the phrase or a part of it: the first phrase holding it stands in."""
    if "phrase" in detection:
        return detection["phrase"]
    label = detection["label"]
    for phrase in phrases:
        if label == phrase or label in phrase:
            return phrase
    raise ValueError(f"detection label {label!r} is in none of the phrases {phrases}")


def xyxy_to_xywh(box: list[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def coco_instances(records: list[dict]) -> dict:
    """The COCO instances dict (info, licenses, images, categories, annotations) for result.json records."""
    category_ids: dict[str, int] = {}
    for record in records:
        for phrase in record["phrases"]:
            category_ids.setdefault(phrase, len(category_ids) + 1)
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": _file_name(record["image"]), "width": record["width"],
                       "height": record["height"], "source": record["image"], "prompt": record["prompt"]})
        for det in record["detections"]:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[_phrase_of(det, record["phrases"])],
                "segmentation": det["mask_rle"],
                "area": det["mask_area"],
                "bbox": xyxy_to_xywh(det["box_xyxy"]),
                "iscrowd": 0,
                "score": det["box_score"],
                "mask_score": det["mask_score"],
                "label": det["label"],
            })
    random_weights = any(record["random_weights"] for record in records)
    return {
        "info": {"description": COCO_DESCRIPTION, "random_weights": random_weights,
                 "note": RANDOM_WEIGHTS_NOTE if random_weights else None,
                 "models": records[0]["models"] if records else None},
        "licenses": [],
        "images": images,
        "categories": [{"id": i, "name": phrase, "supercategory": "object"} for phrase, i in category_ids.items()],
        "annotations": annotations,
    }


def write_coco(path: str | Path, records: list[dict]) -> Path:
    """Write `coco_instances(records)` to `path` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, coco_instances(records))
    return path


# --- several workers -------------------------------------------------------------------------------------------

_WORKER_FILE = re.compile(r"^(?P<stem>.+)\.worker-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>\.[^.]+)$")


def worker_coco_path(path: str | Path, share) -> Path:
    """Where worker K of N (a `workers.WorkerShare`) writes its COCO file for `--coco path`: the path itself for
    one worker, else its stem + `.worker-K-of-N` (instances.json -> instances.worker-0-of-2.json), a name
    `merge_coco_files` reads back to find missing workers."""
    path = Path(path)
    if share.num_workers == 1:
        return path
    return path.with_name(f"{path.stem}.worker-{share.worker_index}-of-{share.num_workers}{path.suffix or '.json'}")


def _check_workers_complete(paths: list[Path]) -> None:
    """UserError when the worker files among `paths` (named by `worker_coco_path`) lack some worker's file."""
    runs: dict[tuple, dict[int, set[int]]] = {}
    for path in paths:
        match = _WORKER_FILE.match(path.name)
        if match:
            run = (path.parent, match["stem"], match["suffix"])
            runs.setdefault(run, {}).setdefault(int(match["count"]), set()).add(int(match["index"]))
    for (parent, stem, suffix), by_count in runs.items():
        if len(by_count) > 1:
            counts = " and ".join(str(n) for n in sorted(by_count))
            raise UserError(f"{parent / stem}.worker-*{suffix} come from runs with {counts} workers: merge the "
                            f"files of one run only (delete the other run's files)")
        (count, indices), = by_count.items()
        missing = sorted(set(range(count)) - indices)
        if missing:
            example = parent / f"{stem}.worker-{missing[0]}-of-{count}{suffix}"
            raise UserError(f"the COCO file of worker(s) {', '.join(map(str, missing))} of {count} is missing "
                            f"(e.g. {example}): run those workers again (they skip what is done), then merge")


def merge_coco(parts: list[tuple[str, dict]]) -> dict:
    """One COCO instances dict from the workers' (name, dict) parts, with fresh consistent ids.

    Images are sorted by their source, so the result does not depend on the number of workers or the order of
    the parts; for `--image-dir` that is also the order of a one-worker run, whose file this then equals (but
    for `info.merged_from`). Categories are unified by name and numbered as `coco_instances` numbers them: in
    order of first appearance of the images' prompt phrases. An image in two parts is refused.
    """
    if len({name for name, _ in parts}) != len(parts):
        raise ValueError("the parts' names must be distinct")
    images, owner = [], {}
    for name, data in parts:
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
                raise UserError(f"{name} is not a COCO instances file (no {key!r} list): pass the files "
                                f"segment.py --coco wrote")
        for image in data["images"]:
            if not isinstance(image, dict) or "id" not in image or not (image.get("source") or image.get("file_name")):
                raise UserError(f"{name}: an image entry has no id or no file name: the file is damaged; run its "
                                f"worker again with --redo")
            source = str(image.get("source") or image["file_name"])
            if source in owner:
                raise UserError(f"image {source} is in both {owner[source]} and {name}: the files overlap; merge "
                                f"the files of one run only")
            owner[source] = name
            images.append((source, name, image))
    images.sort(key=lambda item: item[0])
    by_name = dict(parts)
    category_ids: dict[str, int] = {}
    for _, name, image in images:
        phrases = parse_prompt(image["prompt"]) if "prompt" in image else \
            [c["name"] for c in by_name[name]["categories"]]
        for phrase in phrases:
            category_ids.setdefault(phrase, len(category_ids) + 1)
    for name, data in parts:  # categories no image's prompt names (files made by other tools)
        for category in data["categories"]:
            category_ids.setdefault(category["name"], len(category_ids) + 1)
    annotations_of: dict[tuple[str, int], list[dict]] = {}
    for name, data in parts:
        category_names = {c["id"]: c["name"] for c in data["categories"]}
        image_ids = {image["id"] for image in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") not in image_ids or ann.get("category_id") not in category_names:
                raise UserError(f"{name}: annotation {ann.get('id')} names an image or category the file does not "
                                f"hold: the file is damaged; run its worker again with --redo")
            ann = {**ann, "category_id": category_ids[category_names[ann["category_id"]]]}
            annotations_of.setdefault((name, ann["image_id"]), []).append(ann)
    merged_images, merged_annotations = [], []
    for new_id, (_, name, image) in enumerate(images, start=1):
        merged_images.append({**image, "id": new_id})
        for ann in sorted(annotations_of.get((name, image["id"]), []), key=lambda a: a["id"]):
            merged_annotations.append({**ann, "id": len(merged_annotations) + 1, "image_id": new_id})
    infos = [data.get("info") or {} for _, data in parts]
    random_weights = any(info.get("random_weights") for info in infos)
    first = (by_name[images[0][1]].get("info") or {}) if images else {}
    return {
        "info": {"description": COCO_DESCRIPTION, "random_weights": random_weights,
                 "note": RANDOM_WEIGHTS_NOTE if random_weights else None, "models": first.get("models"),
                 "merged_from": [name for name, _ in parts]},
        "licenses": [],
        "images": merged_images,
        "categories": [{"id": i, "name": phrase, "supercategory": "object"} for phrase, i in category_ids.items()],
        "annotations": merged_annotations,
    }


def merge_coco_files(paths: list[str | Path]) -> dict:
    """`merge_coco` over COCO files, after checking that no worker's file of a run is missing."""
    paths = list(dict.fromkeys(Path(p) for p in paths))  # a file named twice (two globs) counts once
    if not paths:
        raise UserError("no COCO files to merge: pass the files segment.py --coco wrote "
                        "(e.g. out/instances.worker-*.json)")
    _check_workers_complete(paths)
    parts = []
    for path in sorted(paths):
        try:
            parts.append((path.name if len({p.name for p in paths}) == len(paths) else str(path),
                          json.loads(path.read_text())))
        except FileNotFoundError:
            raise UserError(f"COCO file not found: {path} (check the path)") from None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} as JSON ({e}): pass the files segment.py --coco wrote") from None
    try:
        return merge_coco(parts)
    except (KeyError, TypeError) as e:  # a file made or edited by something else
        raise UserError(f"a COCO file lacks a field ({e!r}) or holds one of the wrong kind: pass the files "
                        f"segment.py --coco wrote") from None
