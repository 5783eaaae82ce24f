"""`import torchvision` for the benchmark's input pipeline, on the CPU torch build too.

The benchmark uses torchvision only for its image transforms (RandomCrop, RandomHorizontalFlip, ToTensor,
Normalize), the PyTorch input pipeline the write-ups used. torchvision==0.28.0 on PyPI is a CUDA build; on
the CPU torch 2.13.0 its compiled ops do not load and its import dies with "operator torchvision::nms does
not exist" (see ../shared/docs/environment.md). Declaring the `nms`/`qnms` schemas lets it import; the
transforms never call them, so they get no kernel here (calling `torchvision.ops.nms` would still fail).

A no-op where torchvision imports normally (the GPU machine, a matching CPU build) or is already imported
(for example by `torch_seg`'s own shim, which `benchmarks` must not import).
"""
from __future__ import annotations

import sys

import torch

_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def import_torchvision():
    global _LIBRARY
    try:
        import torchvision
        return torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    # Forget the half-imported package, declare the missing schemas, and import it again.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision
