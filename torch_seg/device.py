"""Device choice and mixed precision, defined once for the image and video chains."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import contextlib
from dataclasses import dataclass

import torch

from torch_seg.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    """PyTorch's Metal backend (Apple-silicon Macs) is built into this torch and usable on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else mps, else cpu. Asking for a device that is not there is a user error,
    not a fallback."""
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name == "mps" and not mps_available():
        raise UserError("--device mps was asked for but this PyTorch has no usable MPS backend (it needs an "
                        "Apple-silicon Mac and PyTorch's macOS arm64 build): use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class AutocastChoice:
    """The autocast dtype for a device (None: no autocast, float32) and why; recorded in result.json and
    tracks.json."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str | None:
        return None if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def to_dict(self) -> dict:
        return {"dtype": self.name, "reason": self.reason}  # dtype None: no autocast, float32

    def describe(self) -> str:
        return f"{'autocast ' + self.name if self.dtype is not None else 'float32, no autocast'}: {self.reason}"


def choose_autocast(device_type: str, capability: tuple[int, int] | None = None, name: str = "") -> AutocastChoice:
    """The rule, a pure function: on CUDA bfloat16 from Ampere (sm_80) on, float16 on the GPUs with fast float16
    but no fast bfloat16 (V100 sm_70, T4 sm_75, P100 sm_60), none on slower ones; none on MPS and on the CPU."""
    if device_type == "cuda":
        gpu = name or "this GPU"
        if capability is None:
            return AutocastChoice(torch.bfloat16, f"{gpu}: compute capability unknown, bfloat16 as SAM 2's demos")
        sm = f"sm_{capability[0]}{capability[1]}"
        if capability >= (8, 0):
            return AutocastChoice(torch.bfloat16, f"{gpu} ({sm}, Ampere or newer) has bfloat16 tensor cores "
                                                  f"(SAM 2's own demos use bfloat16 autocast)")
        if capability >= (7, 0) or capability == (6, 0):
            return AutocastChoice(torch.float16, f"{gpu} ({sm}) has fast float16 but no fast bfloat16 (that "
                                                 f"needs sm_80)")
        return AutocastChoice(None, f"{gpu} ({sm}) has neither fast bfloat16 nor fast float16")
    if device_type == "mps":
        # SAM 2's own notebooks run MPS without autocast and warn that its MPS support is preliminary; float16
        # autocast on MPS has not been checked against these models here (no Mac at hand), so float32 it is.
        return AutocastChoice(None, "MPS: float32, as SAM 2's own demos run it (its MPS support is preliminary)")
    return AutocastChoice(None, "CPU: float32 (16-bit autocast is for GPU tensor cores)")


def autocast_choice(device: torch.device | str) -> AutocastChoice:
    """`choose_autocast` for `device`, reading a CUDA GPU's compute capability and name from torch."""
    device = torch.device(device)
    if device.type == "cuda":
        return choose_autocast("cuda", tuple(torch.cuda.get_device_capability(device)),
                               torch.cuda.get_device_name(device))
    return choose_autocast(device.type)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (CUDA and MPS run asynchronously), so wall times are charged right."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast in `autocast_choice(device)`'s dtype; a no-op where that is None (CPU, MPS, old GPUs)."""
    device = torch.device(device)
    choice = autocast_choice(device)
    if choice.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=choice.dtype)
