"""Make `import torchvision` work on the CPU torch build.

torchvision==0.28.0 on PyPI is the CUDA build; on the CPU torch 2.13.0 its compiled ops (`_C`) do not load,
and its import then dies in `_meta_registrations` with "operator torchvision::nms does not exist". The only
compiled ops this project uses are `nms` (GroundingDINO, SAM 2's postprocessing), so registering the
`torchvision::nms` / `torchvision::qnms` schemas with a pure-PyTorch CPU kernel lets torchvision import and
`ops.nms`, `box_convert`, `box_iou` and the transforms work (see ../shared/docs/environment.md). torchvision
then still believes its ops are missing (`_has_ops()` is False, so `ops.nms` refuses to run); after importing
it we tell it that the ops it needs are there. Other compiled ops (roi_align, deform_conv2d) stay absent.

This is a no-op where torchvision's own ops load (a matching CUDA or CPU build). Import this module before anything imports torchvision: `torch_seg/__init__.py` does.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it unregisters the ops


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics: indices of kept boxes, by score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _native_ops_load() -> bool:
    """True when torchvision's compiled `_C` library loads into this torch (then nothing needs patching)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def install() -> bool:
    """Register the CPU fallback ops if torchvision's own cannot load. Returns True if it registered them."""
    global _LIBRARY
    if _LIBRARY is not None or _native_ops_load():
        return False
    if "torchvision" in sys.modules:
        # Imported already, its schemas declared by another shim that gives them no kernel (the speed
        # benchmark's, which needs only transforms; both meet only in one pytest session): add the kernels.
        lib = torch.library.Library("torchvision", "IMPL")
    else:
        lib = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for name in ("nms", "qnms"):
        lib.impl(name, nms_reference, "CPU")
    _LIBRARY = lib
    import torchvision.extension  # safe now that the nms schemas exist

    torchvision.extension._has_ops = lambda: True
    return True


install()
