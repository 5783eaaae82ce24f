"""What a tracking run writes: masks/<frame>.png label images, overlay.mp4 and tracks.json (schema defined here).

Everything goes into a temporary sibling of the output folder that is renamed into place at the end
(`results.atomic_dir`), so an interrupted or failed run never leaves a half-written result.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from torch_seg.video.frames import VideoFrames, frame_file_name
from torch_seg.boxes import mask_to_box
from torch_seg.overlay import draw_overlay, palette
from torch_seg.results import RANDOM_WEIGHTS_NOTE, atomic_dir, write_json
from torch_seg.rle import mask_area, rle_box
from torch_seg.video.propagation import TrackingResult

TRACKS_SCHEMA_VERSION = 1
OVERLAY_VIDEO = "overlay.mp4"
OVERLAY_FRAMES_DIR = "overlay"  # used instead of overlay.mp4 where OpenCV has no mp4 encoder
# mp4v (MPEG-4 Part 2) is the mp4 codec every OpenCV build with FFmpeg can write; H.264 needs a GPL encoder.
OVERLAY_FOURCC = "mp4v"


def tracks_record(result: TrackingResult, frames: VideoFrames, *, prompt: str, phrases: list[str], models: dict,
                  random_weights: bool, device: str, options: dict, overlay: str | None,
                  timings_s: dict[str, float]) -> dict:
    """The tracks.json schema, defined once. Per object: its label, the frame it was first prompted on, and per
    frame where it has a mask its box (pixel xyxy), area (pixels) and COCO RLE."""
    objects = []
    for obj in result.objects:
        per_frame = []
        for index, masks in enumerate(result.frame_masks):
            rle = masks.get(obj.id)
            if rle is not None:
                per_frame.append({"frame": index, "box_xyxy": rle_box(rle), "area": mask_area(rle), "rle": rle})
        objects.append({"id": obj.id, "label": obj.label, "score": round(obj.score, 6),
                        "first_frame": obj.first_frame, "prompt_box_xyxy": [round(v, 2) for v in obj.prompt_box_xyxy],
                        "num_frames": len(per_frame), "frames": per_frame})
    propagate_s = result.timings_s.get("propagate_s", 0.0)
    return {
        "schema_version": TRACKS_SCHEMA_VERSION,
        "video": frames.source,
        "num_frames": len(frames),
        "width": frames.width,
        "height": frames.height,
        "fps": frames.fps,
        "frame_names": frames.names,
        "prompt": prompt,
        "phrases": phrases,
        "options": options,
        "models": models,
        "random_weights": bool(random_weights),
        "note": RANDOM_WEIGHTS_NOTE if random_weights else None,
        "device": device,
        "label_images": "masks/<frame index, 5 digits>.png: uint16, 0 = background, else the object id",
        "overlay": overlay,
        "detection_frames": result.detection_frames,
        "num_objects": len(objects),
        "objects": objects,
        "timings_s": {**result.timings_s, **{k: round(v, 3) for k, v in timings_s.items()}},
        "frames_propagated": result.frames_propagated,
        # Propagation only (SAM 2's per-frame work, both directions), the figure comparable to the SAM 2 paper's.
        "propagation_frames_per_s": round(result.frames_propagated / propagate_s, 4) if propagate_s > 0 else None,
    }


def _open_overlay_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter | None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*OVERLAY_FOURCC), fps, (width, height))
    if writer.isOpened():
        return writer
    writer.release()
    path.unlink(missing_ok=True)
    return None


def draw_tracked_objects(frame: np.ndarray, label: np.ndarray, result: TrackingResult,
                         banner: str | None = None) -> np.ndarray:
    """One overlay frame: each present object's mask, box and "#id label" in the colour of its id, so an
    object keeps its colour from frame to frame whatever else is visible."""
    ids = np.array([obj.id for obj in result.objects])
    by_id = np.zeros((int(ids.max()) + 1, 3), dtype=np.uint8)
    by_id[ids] = palette(len(ids))  # palette(n)[i] does not depend on n: object i keeps its colour
    present = [obj for obj in result.objects if (label == obj.id).any()]
    masks = np.stack([label == obj.id for obj in present]) if present else np.zeros((0, *label.shape), bool)
    boxes = np.array([mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    return draw_overlay(frame, masks, boxes, [f"#{obj.id} {obj.label}" for obj in present],
                        colours=by_id[[obj.id for obj in present]], banner=banner)


def write_tracking_output(out_dir: str | Path, frames: VideoFrames, result: TrackingResult, record: dict, *,
                          banner: str | None = None, run_started: float | None = None) -> Path:
    """Write masks/<frame>.png for every frame, the overlay video (or frames) and tracks.json, atomically.

    With no tracked object only tracks.json is written: there is nothing to draw or label. The writing time
    (and the run's total, from `run_started`, a perf_counter value) go into the record before it is saved.
    """
    out_dir = Path(out_dir)
    write_started = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        if result.objects:
            (tmp / "masks").mkdir()
            writer = _open_overlay_writer(tmp / OVERLAY_VIDEO, frames.fps, frames.width, frames.height)
            if writer is None:
                (tmp / OVERLAY_FRAMES_DIR).mkdir()
            record["overlay"] = OVERLAY_VIDEO if writer is not None else f"{OVERLAY_FRAMES_DIR}/<frame>.jpg"
            try:
                for index in tqdm(range(len(frames)), desc="writing masks and overlay", unit="frame"):
                    label = result.label_image(index)
                    Image.fromarray(label).save(tmp / "masks" / frame_file_name(index, ".png"))
                    drawn = draw_tracked_objects(frames.read(index), label, result, banner)
                    if writer is not None:
                        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    else:
                        Image.fromarray(drawn).save(tmp / OVERLAY_FRAMES_DIR / frame_file_name(index), quality=90)
            finally:
                if writer is not None:
                    writer.release()
        now = time.perf_counter()
        record["timings_s"]["write_s"] = round(now - write_started, 3)
        if run_started is not None:
            record["timings_s"]["total_s"] = round(now - run_started, 3)
        write_json(tmp / "tracks.json", record)
    return out_dir
