"""One COCO instances file for a whole run, built from the result.json records (`results.result_record`).

Images are numbered 1, 2, ... in the order given, categories 1, 2, ... by the prompts' phrases in order of
first appearance, annotations 1, 2, ... image by image in detection order: the same records give the same
file. Each annotation carries the mask as COCO compressed RLE, the detector's box as xywh, the mask's area
and the box score, so the file loads with `pycocotools.coco.COCO` and its `annotations` list serves
`COCO.loadRes` / `COCOeval` as detection results.
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path, PurePosixPath

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
