"""Text-prompted segmentation: GroundingDINO (or CLIPSeg) boxes -> SAM 2.1 masks, in PyTorch.

    from torch_seg import TextSegmenter, load_image
    segmenter = TextSegmenter(sam2_model="tiny")          # checkpoints from scripts/download_checkpoints.py
    result = segmenter.segment(load_image("photo.jpg"), "truck. wheel.")
    result.masks, result.detections.boxes_xyxy, result.detections.labels

Video: `track_video` (a clip and a prompt -> masks with stable ids, see torch_seg.video).

The torchvision workaround is installed first so that every module of the package, and the libraries it
imports (groundingdino, sam2), can import torchvision on the CPU torch build. The names below load lazily.
"""
from __future__ import annotations

import importlib

from torch_seg import _deps

_deps.require_seg_extra()  # a missing package is one line naming `pip install "vit-sam2-lab[seg]"`
from torch_seg import _torchvision_compat  # noqa: E402,F401  (must run before torchvision is imported)

_EXPORTS = {
    "TextSegmenter": "torch_seg.pipeline",
    "Segmentation": "torch_seg.pipeline",
    "load_image": "torch_seg.images",
    "track_video": "torch_seg.video.run",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torch_seg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
