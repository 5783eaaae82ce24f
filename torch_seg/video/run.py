"""Tracking runs from video paths to output folders: what `scripts/track.py` calls.

Cheap checks come first (prompt, options, checkpoints, every frame decoded and sized) so a user error fails
in seconds, before any model is built and before anything is written.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import sys
import tempfile
import time
from pathlib import Path

import torch

from torch_seg.checkpoints import (DEFAULT_GDINO_MODEL, DEFAULT_SAM2_MODEL, resolve_gdino_checkpoint,
                                   resolve_sam2_checkpoint, resolve_text_encoder)
from torch_seg.device import autocast_choice, resolve_device
from torch_seg.errors import UserError
from torch_seg.video.frames import open_video
from torch_seg.pipeline import RANDOM_WEIGHTS_BANNER, quiet_library_warnings
from torch_seg.prompts import parse_prompt
from torch_seg.resume import seeder_record_name
from torch_seg.video.predictor import build_video_predictor
from torch_seg.seeders import DEFAULT_BOX_THRESHOLD, DEFAULT_TEXT_THRESHOLD, build_seeder
from torch_seg.seeders.base import Seeder, check_thresholds
from torch_seg.seeders.clipseg import check_clipseg_folder
from torch_seg.video.tracking import DEFAULT_MATCH_IOU
from torch_seg.video.propagation import DEFAULT_MAX_OBJECTS, TrackingOptions, VideoTracker
from torch_seg.video.output import tracks_record, write_tracking_output


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TrackingJob:
    """One prompt, one set of options and models for any number of clips (scripts/track.py over many videos).

    The cheap checks run once, here; the seeder and SAM 2's video predictor are built on the first clip that
    needs them and kept for the next ones. `seeder_instance` replaces the built seeder (tests inject detections
    at the seeder interface this way). `device` is a name (auto, cpu, cuda, mps) or a torch.device.
    """

    def __init__(self, prompt: str, *, prompt_frame: int = 0, redetect_every: int | None = None,
                 max_frames: int | None = None, sam2_model: str = DEFAULT_SAM2_MODEL, sam2_checkpoint=None,
                 seeder: str = "gdino", gdino_model: str = DEFAULT_GDINO_MODEL, gdino_checkpoint=None,
                 text_encoder=None, clipseg_model=None, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                 text_threshold: float = DEFAULT_TEXT_THRESHOLD, max_objects: int = DEFAULT_MAX_OBJECTS,
                 match_iou: float = DEFAULT_MATCH_IOU, device: str | torch.device = "auto",
                 random_weights: bool = False, offload_video_to_cpu: bool = False,
                 offload_state_to_cpu: bool = False, vos_optimized: bool = False, seeder_options: dict | None = None,
                 seeder_instance: Seeder | None = None):
        self.prompt, self.phrases = prompt, parse_prompt(prompt)
        if not 0.0 < match_iou <= 1.0:
            raise UserError(f"--match-iou {match_iou} must be in (0, 1]")
        check_thresholds(box_threshold=box_threshold, text_threshold=text_threshold)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        precision = autocast_choice(self.device)  # what torch_seg.device.autocast runs both models in, and why
        if vos_optimized and self.device.type != "cuda":
            raise UserError("--vos-optimized compiles SAM 2 for CUDA: use it with --device cuda (or drop it)")
        self.options = TrackingOptions(prompt_frame=prompt_frame, redetect_every=redetect_every,
                                       match_iou=match_iou, max_objects=max_objects,
                                       offload_video_to_cpu=offload_video_to_cpu,
                                       offload_state_to_cpu=offload_state_to_cpu)
        self.options.check()
        self.checkpoint = None if random_weights else resolve_sam2_checkpoint(sam2_model, sam2_checkpoint)
        if seeder == "gdino" and seeder_instance is None and not random_weights:
            # Found (or refused) now, not after minutes of decoding a long video.
            resolve_gdino_checkpoint(gdino_model, gdino_checkpoint)
            resolve_text_encoder(text_encoder)
        if seeder == "clipseg" and seeder_instance is None and not random_weights:
            check_clipseg_folder(clipseg_model)
        quiet_library_warnings()
        _say(f"on {self.device}: {precision.describe()}")
        if random_weights:
            _say("warning: --random-weights: the models have RANDOM weights; boxes, labels and masks are "
                 "meaningless (plumbing only), and tracks.json says so")
        self.max_frames, self.random_weights = max_frames, random_weights
        self.sam2_model, self.vos_optimized = sam2_model, vos_optimized
        self._seeder_args = dict(
            name=seeder, checkpoint=gdino_checkpoint if seeder == "gdino" else clipseg_model,
            text_encoder=text_encoder, random_weights=random_weights, box_threshold=box_threshold,
            text_threshold=text_threshold, model_name=gdino_model if seeder == "gdino" else None,
            max_detections=max_objects, **(seeder_options or {}))
        self._seeder, self._predictor = seeder_instance, None
        self.run_options = {"prompt_frame": prompt_frame, "redetect_every": redetect_every, "max_frames": max_frames,
                            "max_objects": max_objects, "match_iou": match_iou, "box_threshold": box_threshold,
                            "text_threshold": text_threshold, "offload_video_to_cpu": offload_video_to_cpu,
                            "offload_state_to_cpu": offload_state_to_cpu,
                            "autocast": precision.to_dict()}

    def seeder(self) -> Seeder:
        if self._seeder is None:
            _say(f"loading {self._seeder_args['name']} ...")
            self._seeder = build_seeder(device=self.device, **self._seeder_args)
        return self._seeder

    def predictor(self):
        # Asked for by VideoTracker only once a clip has objects: a prompt that finds nothing never pays for SAM 2.
        if self._predictor is None:
            _say(f"loading SAM 2.1 {self.sam2_model} video predictor ...")
            self._predictor = build_video_predictor(self.sam2_model, self.checkpoint, self.device,
                                                    self.random_weights, self.vos_optimized)
        return self._predictor

    def settings(self, video: str | Path) -> dict:
        """The tracks.json fields a finished output for `video` must hold to count as this job's
        (torch_seg/resume.py `finished_tracking`)."""
        seeder_name = (self._seeder.describe()["name"] if self._seeder is not None and hasattr(self._seeder, "describe")
                       else seeder_record_name(self._seeder_args["name"], self._seeder_args["model_name"]))
        return {"video": str(Path(video)), "prompt": self.prompt, "options": self.run_options,
                "random_weights": bool(self.random_weights), "models.sam2.name": f"sam2.1_hiera_{self.sam2_model}",
                "models.seeder.name": seeder_name}

    def track(self, video: str | Path, out: str | Path) -> dict:
        """Track the prompt's objects through `video` into `out/`; returns the tracks.json record."""
        started = time.perf_counter()
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder: choose another path")
        with tempfile.TemporaryDirectory(prefix="torch_seg_frames_") as jpeg_dir:
            frames = open_video(video, jpeg_dir, self.max_frames)
            self.options.check(len(frames))
            read_s = time.perf_counter() - started
            seeder = self.seeder()
            tracker = VideoTracker(seeder, self.predictor, self.device, self.options)
            result = tracker.track(frames, self.prompt)
            models = {"seeder": seeder.describe() if hasattr(seeder, "describe") else
                      {"name": getattr(seeder, "name", type(seeder).__name__)},
                      "sam2": {"name": f"sam2.1_hiera_{self.sam2_model}", "checkpoint": None if self.checkpoint is None
                               else str(self.checkpoint), "random_weights": self.random_weights,
                               "vos_optimized": self.vos_optimized}}
            record = tracks_record(result, frames, prompt=self.prompt, phrases=self.phrases, models=models,
                                   random_weights=self.random_weights, device=str(self.device),
                                   options=dict(self.run_options), overlay=None, timings_s={"read_frames_s": read_s})
            write_tracking_output(out, frames, result, record,
                                  banner=RANDOM_WEIGHTS_BANNER if self.random_weights else None, run_started=started)
        return record


def track_video(video: str | Path, prompt: str, out: str | Path, **options) -> dict:
    """Track the objects `prompt` names through `video` into `out/`; returns the tracks.json record.

    `options` are `TrackingJob`'s (prompt_frame, redetect_every, max_frames, the models, device, ...).
    """
    return TrackingJob(prompt, **options).track(video, out)


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
        fps = record["propagation_frames_per_s"]  # None when the propagation took no measurable time
        speed = f"{fps:.2f} frames/s propagation" if fps is not None else "propagation not timed"
        lines.append(f"{record['num_objects']} object(s) tracked over {record['num_frames']} frames "
                     f"({speed} on {record['device']}) -> {out}")
    if record["random_weights"]:
        lines.append("RANDOM WEIGHTS: results are meaningless (plumbing only)")
    return "\n".join(lines)
