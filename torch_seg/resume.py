"""What a rerun may skip: result folders that are complete and were made with the same settings.

A result folder is written into a temporary sibling and renamed into place only once whole
(`results.atomic_dir`), with its JSON written last, so a folder under its final name with a JSON file that
parses is finished work. The files the JSON names are checked too, so a folder damaged by hand or by a partial
copy is redone. A finished folder made with other settings (another prompt, threshold, model or source) is
not skipped: the rerun replaces it, as every run did before workers could skip.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch_seg.results import RESULT_SCHEMA_VERSION


def seeder_record_name(seeder: str, gdino_model: str) -> str:
    """The name a seeder's `describe()` gives (seeders/gdino.py, seeders/clipseg.py), known before it is built."""
    return f"groundingdino_{gdino_model}" if seeder == "gdino" else "clipseg_rd64_refined"


_MISSING = object()


def _lookup(record: dict, dotted: str):
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _read_matching(path: Path, schema_version: int, expected: dict) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema_version") != schema_version:
        return None
    if any(_lookup(record, key) != value for key, value in expected.items()):
        return None
    return record


def finished_image_result(folder: str | Path, expected: dict) -> dict | None:
    """The result.json record of a complete image result folder whose fields equal `expected` (keys may be
    dotted: "models.sam2.name"), else None."""
    folder = Path(folder)
    record = _read_matching(folder / "result.json", RESULT_SCHEMA_VERSION, expected)
    if record is None or not isinstance(record.get("detections"), list):
        return None
    files = ["overlay.png", *(det.get("mask_file", "") for det in record["detections"])]
    return record if all(name and (folder / name).is_file() for name in files) else None


def finished_image_folders(out_dir: str | Path) -> tuple[list[dict], list[str]]:
    """The records of every finished image result folder directly under `out_dir`, sorted by image source (the
    order `coco.merge_coco` gives), and the names of the folders holding no finished result.json."""
    out_dir = Path(out_dir)
    records, unfinished = [], []
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record = finished_image_result(folder, {})
        if record is None:
            unfinished.append(folder.name)
        else:
            records.append(record)
    records.sort(key=lambda record: record.get("image", ""))
    return records, unfinished


def finished_tracking(folder: str | Path, expected: dict) -> dict | None:
    """The tracks.json record of a complete tracking output folder whose fields equal `expected`, else None."""
    from torch_seg.video.frames import frame_file_name
    from torch_seg.video.output import OVERLAY_FRAMES_DIR, OVERLAY_VIDEO, TRACKS_SCHEMA_VERSION

    folder = Path(folder)
    record = _read_matching(folder / "tracks.json", TRACKS_SCHEMA_VERSION, expected)
    if record is None or not isinstance(record.get("num_frames"), int):
        return None
    if not record.get("objects"):
        return record  # nothing tracked: tracks.json is the whole output
    masks = [folder / "masks" / frame_file_name(i, ".png") for i in range(record["num_frames"])]
    overlay = folder / OVERLAY_VIDEO if record.get("overlay") == OVERLAY_VIDEO else folder / OVERLAY_FRAMES_DIR
    return record if overlay.exists() and all(path.is_file() for path in masks) else None


def image_settings(args, source: str) -> dict:
    """What `finished_image_result` compares for scripts/segment.py's `args` and one image `source`."""
    return {"image": str(source), "prompt": args.prompt, "box_threshold": args.box_threshold,
            "text_threshold": args.text_threshold, "random_weights": bool(args.random_weights),
            "models.sam2.name": f"sam2.1_hiera_{args.sam2_model}",
            "models.seeder.name": seeder_record_name(args.seeder, args.gdino_model)}
