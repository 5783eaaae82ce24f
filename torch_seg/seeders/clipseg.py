"""CLIPSeg (transformers) as a region seeder: a coarse per-phrase heat map -> box + point prompts for SAM 2.

CLIPSeg predicts a 352x352 relevance map for each phrase. Each connected region of the map above the
threshold becomes one object: its bounding box, its hottest pixel as a positive point, its peak as the score.
SAM 2 then turns these rough regions into sharp masks.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from torch_seg.checkpoints import CLIPSEG_MODEL_ID
from torch_seg.device import autocast
from torch_seg.errors import UserError
from torch_seg.prompts import parse_prompt
from torch_seg.seeders.base import Detections, check_thresholds

CLIPSEG_IMAGE_SIZE = 352  # the resolution CLIPSeg was trained at
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
MIN_AREA_FRACTION = 0.001  # regions smaller than 0.1% of the image are heat-map speckle, not objects
RANDOM_WEIGHTS_SEED = 0


def heatmap_to_regions(heat: np.ndarray, threshold: float, min_area_fraction: float = MIN_AREA_FRACTION,
                       ) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Connected regions of `heat` (H, W, values in [0, 1]) above `threshold`, as
    (box xyxy float32 in pixels, peak score, peak point xy float32), hottest first."""
    binary = (heat > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = []
    min_area = max(1, min_area_fraction * heat.size)
    for k in range(1, count):  # 0 is the background
        x, y, w, h, area = stats[k]
        if area < min_area:
            continue
        region_heat = np.where(labels == k, heat, -np.inf)
        py, px = np.unravel_index(np.argmax(region_heat), heat.shape)
        regions.append((np.array([x, y, x + w, y + h], np.float32), float(heat[py, px]),
                        np.array([px + 0.5, py + 0.5], np.float32)))
    return sorted(regions, key=lambda r: -r[1])


def _byte_level_alphabet() -> list[str]:
    """CLIP's (GPT-2's) byte-level alphabet: the printable Latin-1 bytes as themselves, then the other bytes
    shifted past 255, in that order (transformers 5 no longer exports its `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def _offline_clip_tokenizer_folder() -> Path:
    """A byte-level CLIP tokenizer without merges (every character a token), for random-weight runs only:
    the real BPE vocabulary ships with the CLIPSeg checkpoint, which cannot be fetched offline."""
    folder = Path(tempfile.mkdtemp(prefix="torch_seg_clip_tok_"))
    chars = _byte_level_alphabet()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def check_clipseg_folder(checkpoint) -> None:
    """A --clipseg-model that is given must be a folder (None means the hub model, for online users)."""
    if checkpoint is not None and not Path(checkpoint).is_dir():
        raise UserError(f"CLIPSeg folder not found: {checkpoint} (pass --clipseg-model with a local copy of "
                        f"{CLIPSEG_MODEL_ID})")


def build_clipseg(checkpoint=None, device="cpu", random_weights: bool = False):
    """(processor, model): a local CLIPSeg folder, the hub model when online, or random weights."""
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    if random_weights:
        # The rd64-refined architecture: ViT-B/16 CLIP, 64-dim decoder, the refined transposed convolution.
        config = CLIPSegConfig(vision_config={"patch_size": 16}, reduce_dim=64,
                               use_complex_transposed_convolution=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = CLIPSegForImageSegmentation(config)
        folder = _offline_clip_tokenizer_folder()
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        image_processor = ViTImageProcessor(size={"height": CLIPSEG_IMAGE_SIZE, "width": CLIPSEG_IMAGE_SIZE},
                                            image_mean=CLIP_MEAN, image_std=CLIP_STD)
        processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return processor, model.to(device).eval()
    source = str(checkpoint) if checkpoint is not None else CLIPSEG_MODEL_ID
    check_clipseg_folder(checkpoint)
    try:
        processor = CLIPSegProcessor.from_pretrained(source)
        model = CLIPSegForImageSegmentation.from_pretrained(source)
    except OSError as e:
        raise UserError(f"cannot load CLIPSeg from {source} ({str(e).splitlines()[0][:100]}): pass --clipseg-model "
                        f"DIR with a local copy of {CLIPSEG_MODEL_ID}, or go online once") from None
    return processor, model.to(device).eval()


class ClipSegSeeder:
    """Text-prompted regions from CLIPSeg heat maps (boxes + peak points)."""

    def __init__(self, *, checkpoint=None, device="cpu", random_weights: bool = False, box_threshold: float = 0.35,
                 max_detections: int = 100, min_area_fraction: float = MIN_AREA_FRACTION):
        check_thresholds(box_threshold=box_threshold)
        self.device = torch.device(device)
        self.processor, self.model = build_clipseg(checkpoint, self.device, random_weights)
        self.checkpoint = None if random_weights else (checkpoint or CLIPSEG_MODEL_ID)
        self.name = "clipseg_rd64_refined"
        self.random_weights = random_weights
        self.threshold, self.max_detections, self.min_area_fraction = box_threshold, max_detections, min_area_fraction

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "random_weights": self.random_weights}

    @torch.inference_mode()
    def heatmaps(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        """(P, H, W) float32 relevance in [0, 1] per phrase, resized to the image."""
        inputs = self.processor(text=phrases, images=[image] * len(phrases), padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with autocast(self.device):
            logits = self.model(**inputs).logits
        logits = logits.reshape(len(phrases), 1, *logits.shape[-2:]).float()
        heat = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return heat[:, 0].sigmoid().cpu().numpy()

    def detect(self, image: np.ndarray, prompt: str, *, box_threshold: float | None = None,
               text_threshold: float | None = None, max_detections: int | None = None) -> Detections:
        """Regions per phrase; `box_threshold` and `max_detections` override the seeder's for this call
        (`text_threshold` is GroundingDINO's and has no meaning here)."""
        threshold = self.threshold if box_threshold is None else box_threshold
        max_detections = self.max_detections if max_detections is None else max_detections
        check_thresholds(box_threshold=threshold)
        phrases = parse_prompt(prompt)
        boxes, scores, labels, points = [], [], [], []
        for phrase, heat in zip(phrases, self.heatmaps(image, phrases)):
            for box, score, point in heatmap_to_regions(heat, threshold, self.min_area_fraction):
                boxes.append(box), scores.append(score), labels.append(phrase), points.append(point[None])
        if not boxes:
            return Detections.empty()
        return Detections(np.stack(boxes), np.array(scores), labels, np.stack(points)).top_k(max_detections)
