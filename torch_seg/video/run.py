"""One tracking run from a video path to an output folder: what `scripts/track.py` calls.

Cheap checks come first (prompt, options, checkpoints, every frame decoded and sized) so a user error fails
in seconds, before any model is built and before anything is written.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import sys
import tempfile
import time
from pathlib import Path

from torch_seg.checkpoints import (DEFAULT_GDINO_MODEL, DEFAULT_SAM2_MODEL, resolve_gdino_checkpoint,
                                   resolve_sam2_checkpoint, resolve_text_encoder)
from torch_seg.device import resolve_device
from torch_seg.errors import UserError
from torch_seg.video.frames import open_video
from torch_seg.pipeline import RANDOM_WEIGHTS_BANNER, quiet_library_warnings
from torch_seg.prompts import parse_prompt
from torch_seg.video.predictor import build_video_predictor
from torch_seg.seeders import DEFAULT_BOX_THRESHOLD, DEFAULT_TEXT_THRESHOLD, build_seeder
from torch_seg.seeders.base import Seeder, check_thresholds
from torch_seg.seeders.clipseg import check_clipseg_folder
from torch_seg.video.tracking import DEFAULT_MATCH_IOU
from torch_seg.video.propagation import DEFAULT_MAX_OBJECTS, TrackingOptions, VideoTracker
from torch_seg.video.output import tracks_record, write_tracking_output


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def track_video(video: str | Path, prompt: str, out: str | Path, *, prompt_frame: int = 0,
                redetect_every: int | None = None, max_frames: int | None = None,
                sam2_model: str = DEFAULT_SAM2_MODEL, sam2_checkpoint=None, seeder: str = "gdino",
                gdino_model: str = DEFAULT_GDINO_MODEL, gdino_checkpoint=None, text_encoder=None,
                clipseg_model=None, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                text_threshold: float = DEFAULT_TEXT_THRESHOLD, max_objects: int = DEFAULT_MAX_OBJECTS,
                match_iou: float = DEFAULT_MATCH_IOU, device: str = "auto", random_weights: bool = False,
                offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                vos_optimized: bool = False, seeder_options: dict | None = None,
                seeder_instance: Seeder | None = None) -> dict:
    """Track the objects `prompt` names through `video` into `out/`; returns the tracks.json record.

    `seeder_instance` replaces the built seeder (tests inject detections at the seeder interface this way).
    """
    started = time.perf_counter()
    phrases = parse_prompt(prompt)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose another path")
    if not 0.0 < match_iou <= 1.0:
        raise UserError(f"--match-iou {match_iou} must be in (0, 1]")
    check_thresholds(box_threshold=box_threshold, text_threshold=text_threshold)
    torch_device = resolve_device(device)
    if vos_optimized and torch_device.type != "cuda":
        raise UserError("--vos-optimized compiles SAM 2 for CUDA: use it with --device cuda (or drop it)")
    options = TrackingOptions(prompt_frame=prompt_frame, redetect_every=redetect_every, match_iou=match_iou,
                              max_objects=max_objects, offload_video_to_cpu=offload_video_to_cpu,
                              offload_state_to_cpu=offload_state_to_cpu)
    options.check()
    checkpoint = None if random_weights else resolve_sam2_checkpoint(sam2_model, sam2_checkpoint)
    if seeder == "gdino" and seeder_instance is None and not random_weights:
        # Found (or refused) now, not after minutes of decoding a long video.
        resolve_gdino_checkpoint(gdino_model, gdino_checkpoint)
        resolve_text_encoder(text_encoder)
    if seeder == "clipseg" and seeder_instance is None and not random_weights:
        check_clipseg_folder(clipseg_model)
    quiet_library_warnings()
    if random_weights:
        _say("warning: --random-weights: the models have RANDOM weights; boxes, labels and masks are meaningless "
             "(plumbing only), and tracks.json says so")

    with tempfile.TemporaryDirectory(prefix="torch_seg_frames_") as jpeg_dir:
        frames = open_video(video, jpeg_dir, max_frames)
        options.check(len(frames))
        read_s = time.perf_counter() - started
        if seeder_instance is None:
            _say(f"loading {seeder} ...")
            seeder_instance = build_seeder(
                seeder, checkpoint=gdino_checkpoint if seeder == "gdino" else clipseg_model, text_encoder=text_encoder,
                device=torch_device, random_weights=random_weights, box_threshold=box_threshold,
                text_threshold=text_threshold, model_name=gdino_model if seeder == "gdino" else None,
                max_detections=max_objects, **(seeder_options or {}))

        def build_predictor():
            _say(f"loading SAM 2.1 {sam2_model} video predictor ...")
            return build_video_predictor(sam2_model, checkpoint, torch_device, random_weights, vos_optimized)

        tracker = VideoTracker(seeder_instance, build_predictor, torch_device, options)
        result = tracker.track(frames, prompt)
        models = {"seeder": seeder_instance.describe() if hasattr(seeder_instance, "describe") else
                  {"name": getattr(seeder_instance, "name", type(seeder_instance).__name__)},
                  "sam2": {"name": f"sam2.1_hiera_{sam2_model}", "checkpoint": None if checkpoint is None else
                           str(checkpoint), "random_weights": random_weights, "vos_optimized": vos_optimized}}
        run_options = {"prompt_frame": prompt_frame, "redetect_every": redetect_every, "max_frames": max_frames,
                       "max_objects": max_objects, "match_iou": match_iou, "box_threshold": box_threshold,
                       "text_threshold": text_threshold, "offload_video_to_cpu": offload_video_to_cpu,
                       "offload_state_to_cpu": offload_state_to_cpu,
                       "autocast": "bf16" if torch_device.type == "cuda" else None}
        record = tracks_record(result, frames, prompt=prompt, phrases=phrases, models=models,
                               random_weights=random_weights, device=str(torch_device), options=run_options,
                               overlay=None, timings_s={"read_frames_s": read_s})
        write_tracking_output(out, frames, result, record, banner=RANDOM_WEIGHTS_BANNER if random_weights else None,
                              run_started=started)
    return record


def summary(record: dict, out: str | Path) -> str:
    """The lines printed at the end of a run."""
    lines = []
    if record["num_objects"] == 0:
        lines.append(f"no object matched {record['prompt']!r} on frame(s) {record['detection_frames']}: wrote an empty "
                     f"tracks.json to {out} (try a lower --box-threshold, another --prompt-frame, or --redetect-every)")
    else:
        for obj in record["objects"]:
            lines.append(f"  #{obj['id']} {obj['label']}: first prompted on frame {obj['first_frame']}, "
                         f"mask on {obj['num_frames']} of {record['num_frames']} frames")
        fps = record["propagation_frames_per_s"]
        lines.append(f"{record['num_objects']} object(s) tracked over {record['num_frames']} frames "
                     f"({fps:.2f} frames/s propagation on {record['device']}) -> {out}")
    if record["random_weights"]:
        lines.append("RANDOM WEIGHTS: results are meaningless (plumbing only)")
    return "\n".join(lines)
