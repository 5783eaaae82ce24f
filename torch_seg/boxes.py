"""Box format conversions between the detectors' outputs and SAM's pixel prompts."""
from __future__ import annotations

import numpy as np


def cxcywh_normalized_to_xyxy_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """GroundingDINO's (cx, cy, w, h) in [0, 1] -> pixel (x0, y0, x1, y1), clipped to the image. float32 (N, 4)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    cx, cy, w, h = boxes.T
    xyxy = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
    return clip_boxes(xyxy, width, height)


def clip_boxes(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip pixel xyxy boxes to [0, width] x [0, height] (box edges, so the far edge may equal the size)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight pixel xyxy box around a bool mask (edges exclusive on the far side), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
