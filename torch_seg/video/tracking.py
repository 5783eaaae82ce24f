"""Object identity across a clip: which re-detected boxes are new objects, and one owner per pixel.

Re-detection (`--redetect-every N`) runs the detector again on a later frame. Its boxes carry no identity, so
each is compared with the objects SAM 2 already tracks: a box that overlaps a tracked object's box by at least
`iou_threshold` (box IoU, the detector's own currency) is that object seen again and is dropped; only boxes
that match no tracked object become new objects with new ids. An object SAM 2 has lost on this frame (empty
mask) is compared through the last box it had, so a re-appearing object is not given a second id.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from torch_seg.boxes import mask_to_box

DEFAULT_MATCH_IOU = 0.5  # the usual detection-matching threshold (COCO's AP50, SORT/ByteTrack's IoU gate)


def select_new_detections(boxes_xyxy: np.ndarray, scores: np.ndarray, tracked_boxes_xyxy: np.ndarray,
                          iou_threshold: float = DEFAULT_MATCH_IOU) -> np.ndarray:
    """Indices (into `boxes_xyxy`, best score first) of detections that are not already tracked objects.

    A detection is already tracked when its IoU with any tracked box is >= `iou_threshold`. Among the rest,
    duplicates of one new object (IoU >= `iou_threshold` with a better-scoring new box) are suppressed.
    """
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4))
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32).reshape(-1))
    tracked = torch.as_tensor(np.asarray(tracked_boxes_xyxy, dtype=np.float32).reshape(-1, 4))
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    unmatched = torch.ones(len(boxes), dtype=torch.bool)
    if len(tracked):
        unmatched = box_iou(boxes, tracked).max(dim=1).values < iou_threshold
    candidates = torch.nonzero(unmatched).flatten()
    keep = nms(boxes[candidates], scores_t[candidates], iou_threshold)  # sorted by score, best first
    return candidates[keep].numpy().astype(np.int64)


class LastSeenBoxes:
    """The most recent non-empty box of every tracked object id (what re-detections are matched against)."""

    def __init__(self):
        self._boxes: dict[int, np.ndarray] = {}

    def update(self, masks_by_id: dict[int, np.ndarray]) -> None:
        for obj_id, mask in masks_by_id.items():
            box = mask_to_box(mask)
            if box is not None:
                self._boxes[obj_id] = box

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 pixel xyxy, one per object id that has ever had a mask."""
        if not self._boxes:
            return np.zeros((0, 4), dtype=np.float32)
        return np.stack(list(self._boxes.values())).astype(np.float32)


def resolve_overlaps(logits: np.ndarray, claimed: np.ndarray | None = None) -> np.ndarray:
    """Per-object logits (N, H, W) -> per-pixel owner index (H, W) int, -1 where no object is.

    SAM 2 tracks every object independently, so masks may overlap; a label image needs one owner per pixel.
    The pixel goes to the object with the highest logit among those that claim it (logit > 0). Pixels in
    `claimed` (already owned by objects decided in another pass) are left to their owner (-1 here).
    """
    logits = np.asarray(logits, dtype=np.float32)
    height, width = logits.shape[-2:]
    if len(logits) == 0:
        return np.full((height, width), -1, dtype=np.int64)
    owner = logits.argmax(axis=0)
    owner[logits.max(axis=0) <= 0] = -1
    if claimed is not None:
        owner[claimed] = -1
    return owner
