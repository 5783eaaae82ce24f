"""Which backend JAX trains on, said plainly: a platform asked for but not installed, and the Mac's CPU.

JAX picks its backend by itself (TPU, then GPU, then CPU); `JAX_PLATFORMS` makes it use exactly the ones named.
Asked for a TPU without libtpu it raises a paragraph that ends in a stack trace (and for CUDA without a GPU a
bare AssertionError), so the trainer asks for the devices here first and turns that into one line.
"""
from __future__ import annotations

import os
import platform as host_platform
import sys

# What to install for each platform JAX_PLATFORMS can name (setup.sh's modes install the same).
INSTALL_FIX = {
    "tpu": 'pip install "jax[tpu]" (or bash scripts/setup.sh tpu) on a TPU VM',
    "cuda": 'pip install "jax[cuda12]" (or bash scripts/setup.sh gpu) on a machine with an NVIDIA GPU',
    "gpu": 'pip install "jax[cuda12]" (or bash scripts/setup.sh gpu) on a machine with an NVIDIA GPU',
    "rocm": "install JAX's ROCm plugin (docs.jax.dev, installation) on a machine with an AMD GPU",
}


class PlatformError(RuntimeError):
    """JAX cannot start the backend the environment asks for; the message names the fix."""


def requested_platforms(environ=None) -> list[str]:
    """The platforms `JAX_PLATFORMS` names, lower case, in order ([] when it is unset or empty)."""
    value = (environ if environ is not None else os.environ).get("JAX_PLATFORMS", "")
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def platform_error_message(requested: list[str], error: BaseException) -> str:
    """The one line for a backend that failed to start (`error`: what jax.devices() raised)."""
    missing = next((name for name in requested if name in INSTALL_FIX), None)
    # jax's own message without its advice to set JAX_PLATFORMS=''; a bare AssertionError means no device at all.
    detail = str(error).split(" (set JAX_PLATFORMS")[0].strip() or "no such device here"
    asked = f"JAX_PLATFORMS={','.join(requested)}"
    if missing is None:
        return f"{asked}: JAX could not start it ({detail[:160]}); unset JAX_PLATFORMS to let JAX choose"
    what = {"tpu": "a TPU", "rocm": "an AMD GPU"}.get(missing, "an NVIDIA GPU")
    return (f"{asked} asks for {what}, but JAX could not start it ({detail[:160]}): {INSTALL_FIX[missing]}, "
            f"or unset JAX_PLATFORMS to train on what is there")


def check_requested_platform() -> None:
    """PlatformError in one line when `JAX_PLATFORMS` names a backend JAX cannot start (libtpu missing on a TPU
    VM, a CPU-only jaxlib on a GPU machine); nothing otherwise. Starts JAX's backends, as the first use would."""
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as error:
        requested = requested_platforms()
        if not requested:
            raise
        raise PlatformError(platform_error_message(requested, error)) from None


def cpu_fallback_note(platform: str, system: str | None = None, machine: str | None = None) -> str | None:
    """The line to say once when JAX trains on the CPU of an Apple-silicon Mac (None elsewhere): JAX's Metal
    plugin is experimental and not what this project installs, so there JAX computes on the CPU cores."""
    system = system or sys.platform
    machine = machine or host_platform.machine()
    if platform == "cpu" and system == "darwin" and machine == "arm64":
        return ("Apple silicon: JAX has no Metal backend in use here and trains on the CPU (float32); the "
                "segmentation and tracking scripts use the Mac's GPU with --device mps (or auto)")
    return None
