"""The chain: image -> seeder boxes -> SAM 2 masks -> overlay, masks and result.json. Models are built once."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torch_seg.checkpoints import DEFAULT_SAM2_MODEL
from torch_seg.device import autocast_choice, resolve_device, synchronize
from torch_seg.images import image_stem, load_image
from torch_seg.overlay import draw_overlay
from torch_seg.prompts import parse_prompt
from torch_seg.results import detection_records, result_record, write_image_result
from torch_seg.sam import SamPredictor, build_sam2_model
from torch_seg.seeders import DEFAULT_BOX_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_TEXT_THRESHOLD, build_seeder
from torch_seg.seeders.base import Detections

RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS - not a real prediction"


def quiet_library_warnings() -> None:
    """Hide deprecation chatter from groundingdino-py, timm and transformers that users cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*(use_reentrant|requires_grad=True|torch\.meshgrid|"
                                              r"cannot import name ._C.|Skipping the post-processing|not writable).*")


@dataclass
class Segmentation:
    """One image's result: the seeder's detections, one mask per detection, and per-stage wall times."""

    detections: Detections
    masks: np.ndarray  # (N, H, W) bool
    mask_scores: np.ndarray  # (N,) float32
    phrases: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    box_threshold: float | None = None  # the thresholds this result was made with
    text_threshold: float | None = None


class _Stopwatch:
    """Wall time per stage; synchronises CUDA/MPS so asynchronous kernels are charged to the right stage."""

    def __init__(self, device: torch.device):
        self.device, self.ms = device, {}

    def __call__(self, stage: str):
        watch = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                synchronize(watch.device)
                watch.ms[stage] = watch.ms.get(stage, 0.0) + (time.perf_counter() - self.start) * 1e3

        return _Stage()


class TextSegmenter:
    """Build the seeder and SAM 2 once; `segment(image, prompt)` for arrays, `process_file` for result folders.

    One call at a time: SAM 2's predictor holds the current image between encoding and decoding (the server
    queues its requests onto one worker thread).
    """

    def __init__(self, *, seeder: str = "gdino", sam2_model: str = DEFAULT_SAM2_MODEL, sam2_checkpoint=None,
                 gdino_model: str | None = None, gdino_checkpoint=None, text_encoder=None, clipseg_model=None,
                 box_threshold: float = DEFAULT_BOX_THRESHOLD, text_threshold: float = DEFAULT_TEXT_THRESHOLD,
                 max_detections: int = DEFAULT_MAX_DETECTIONS, device: str = "auto", random_weights: bool = False,
                 seeder_options: dict | None = None):
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.autocast = autocast_choice(self.device)  # what torch_seg.device.autocast runs both models in, and why
        self.random_weights = random_weights
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.sam2_model_name = sam2_model
        # Checkpoints are resolved before anything heavy is built, so a missing file fails in a second.
        from torch_seg.checkpoints import resolve_sam2_checkpoint
        self.sam2_checkpoint = None if random_weights else resolve_sam2_checkpoint(sam2_model, sam2_checkpoint)
        self.seeder = build_seeder(seeder, checkpoint=gdino_checkpoint if seeder == "gdino" else clipseg_model,
                                   text_encoder=text_encoder, device=self.device, random_weights=random_weights,
                                   box_threshold=box_threshold, text_threshold=text_threshold, model_name=gdino_model,
                                   max_detections=max_detections, **(seeder_options or {}))
        self.sam = SamPredictor(build_sam2_model(sam2_model, self.sam2_checkpoint, self.device, random_weights))

    def models_record(self) -> dict:
        return {"seeder": self.seeder.describe(),
                "sam2": {"name": f"sam2.1_hiera_{self.sam2_model_name}",
                         "checkpoint": None if self.sam2_checkpoint is None else str(self.sam2_checkpoint),
                         "random_weights": self.random_weights}}

    def segment(self, image: np.ndarray, prompt: str, *, box_threshold: float | None = None,
                text_threshold: float | None = None, max_detections: int | None = None) -> Segmentation:
        """Detect and segment `prompt`'s objects; the keyword arguments override the constructor's for this call."""
        phrases = parse_prompt(prompt)
        watch = _Stopwatch(self.device)
        with watch("detect"):
            detections = self.seeder.detect(image, prompt, box_threshold=box_threshold, text_threshold=text_threshold,
                                            max_detections=max_detections)
        with watch("sam_encode"):
            # The image is encoded even with no detections, so per-stage times stay comparable across images.
            self.sam.set_image(image)
        with watch("sam_decode"):
            masks, mask_scores = self.sam.predict(detections.boxes_xyxy if len(detections) else None,
                                                  detections.points_xy)
        return Segmentation(detections, masks, mask_scores, phrases, watch.ms,
                            self.box_threshold if box_threshold is None else box_threshold,
                            self.text_threshold if text_threshold is None else text_threshold)

    def overlay(self, image: np.ndarray, result: Segmentation) -> np.ndarray:
        """The overlay picture of `result` on `image` (with the random-weights banner where that applies)."""
        d = result.detections
        return draw_overlay(image, result.masks, d.boxes_xyxy, d.labels, d.scores, result.mask_scores,
                            banner=RANDOM_WEIGHTS_BANNER if self.random_weights else None)

    def record(self, result: Segmentation, *, image: str, width: int, height: int, prompt: str,
               timings_ms: dict[str, float]) -> dict:
        """`result` as the result.json record (`image` names the source: a path, a URL or an upload's name)."""
        d = result.detections
        return result_record(
            image_path=image, width=width, height=height, prompt=prompt, phrases=result.phrases,
            box_threshold=result.box_threshold, text_threshold=result.text_threshold, models=self.models_record(),
            random_weights=self.random_weights, device=str(self.device), autocast=self.autocast.to_dict(),
            timings_ms=timings_ms,
            detections=detection_records(d.labels, d.scores, d.boxes_xyxy, result.masks, result.mask_scores,
                                         phrases=d.matched_phrases))

    def process_file(self, path_or_url: str | Path, prompt: str, out_root: str | Path, name: str | None = None) -> dict:
        """Segment one image file into `out_root/<name or stem>/` and return its result.json record."""
        watch = _Stopwatch(self.device)
        with watch("load"):
            image = load_image(path_or_url)
        result = self.segment(image, prompt)
        with watch("overlay"):
            overlay = self.overlay(image, result)
        timings = {"load": watch.ms["load"], **result.timings_ms, "overlay": watch.ms["overlay"]}
        timings["total"] = sum(timings.values())
        height, width = image.shape[:2]
        record = self.record(result, image=str(path_or_url), width=width, height=height, prompt=prompt,
                             timings_ms=timings)
        write_image_result(Path(out_root) / (name or image_stem(path_or_url)), record=record, masks=result.masks,
                           overlay=overlay)
        return record
