"""What every region seeder returns, and the small interface a new seeder (GLIP, OWL-ViT, ...) implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from torch_seg.errors import UserError


@dataclass
class Detections:
    """Objects found in one image: pixel xyxy boxes, scores and the phrase each matched.

    `points_xy` optionally adds positive point prompts per object, (N, K, 2) pixel xy, for seeders whose
    evidence is a heat map rather than a box (CLIPSeg); SAM receives them together with the boxes.
    `phrases` is the prompt phrase each object matched, where a label may be only part of it (GroundingDINO's
    "bag" for "paper bag"); None means every label is its phrase.
    """

    boxes_xyxy: np.ndarray  # float32 (N, 4), pixels
    scores: np.ndarray  # float32 (N,)
    labels: list[str] = field(default_factory=list)
    points_xy: np.ndarray | None = None  # float32 (N, K, 2), pixels
    phrases: list[str] | None = None

    def __post_init__(self):
        self.boxes_xyxy = np.asarray(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = list(self.labels)
        if self.points_xy is not None:
            self.points_xy = np.asarray(self.points_xy, dtype=np.float32).reshape(len(self.boxes_xyxy), -1, 2)
        if self.phrases is not None:
            self.phrases = list(self.phrases)
        if not len(self.boxes_xyxy) == len(self.scores) == len(self.labels) == len(self.matched_phrases):
            raise ValueError(f"{len(self.boxes_xyxy)} boxes, {len(self.scores)} scores, {len(self.labels)} labels "
                             f"and {len(self.matched_phrases)} phrases: one of each per object")

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [])

    @property
    def matched_phrases(self) -> list[str]:
        """The prompt phrase of each object (its label where the seeder gives no separate phrase)."""
        return self.labels if self.phrases is None else self.phrases

    def __len__(self) -> int:
        return len(self.scores)

    def top_k(self, k: int) -> "Detections":
        """The k highest-scoring objects, best first."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return Detections(self.boxes_xyxy[order], self.scores[order], [self.labels[i] for i in order],
                          None if self.points_xy is None else self.points_xy[order],
                          None if self.phrases is None else [self.phrases[i] for i in order])


class Seeder(Protocol):
    """Text + image -> regions for SAM to segment."""

    name: str

    def detect(self, image: np.ndarray, prompt: str, *, box_threshold: float | None = None,
               text_threshold: float | None = None, max_detections: int | None = None) -> Detections:
        """`image` is (H, W, 3) uint8 RGB; `prompt` like "truck. wheel."; boxes in the image's pixels.
        The keyword arguments override the seeder's own settings for this call (None keeps them)."""
        ...

    def describe(self) -> dict:
        """The model name and checkpoint file, for result.json."""
        ...


def check_thresholds(**thresholds: float) -> None:
    """Seeder scores are probabilities: a threshold outside [0, 1] is a user error (checked before any model)."""
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} {value} is outside [0, 1]: scores are probabilities")
