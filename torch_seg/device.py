"""Device choice and mixed precision, defined once for the image and video chains."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import contextlib

import torch

from torch_seg.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu. Asking for cuda without one is a user error, not a fallback."""
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (what SAM 2's own demos use); a no-op on CPU, where bf16 is slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
