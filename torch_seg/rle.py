"""Masks as COCO run-length encoding (pycocotools), in a JSON-ready form."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> {"size": [H, W], "counts": str} (COCO compressed RLE, column-major as COCO defines)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _encoded(rle: dict) -> dict:
    """Our JSON form back to pycocotools' (counts as bytes)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """The inverse of `mask_to_rle`: (H, W) bool."""
    return mask_utils.decode(_encoded(rle)).astype(bool)


def mask_area(rle: dict) -> int:
    return int(mask_utils.area(_encoded(rle)))


def rle_box(rle: dict) -> list[float]:
    """The mask's bounding box, pixel xyxy (pycocotools' xywh converted), rounded to 0.01 px."""
    x, y, w, h = mask_utils.toBbox(_encoded(rle)).tolist()
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]
