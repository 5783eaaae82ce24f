"""One XLA:CPU device per core, so that the data-parallel train step also spreads over the cores of one CPU.

XLA:CPU gives a process one CPU device, and runs the step's operations one after another, each on the intra-op
thread pool. Several of a ViT step's operations use one thread however many there are: YNNPACK's batched
matmuls of the attention (1024 small 65x65 problems at seed-256x6: as fast on 1 core as on 2) and many small
fusions. With one device per core the step is split over the data axis like on a multi-GPU machine (the
`shard_map` train step does not change), each device runs its half of the batch, and those single-threaded
pieces run side by side. On a 2-core Intel Xeon (Ice Lake), same process and batch, two devices against one:
seed-256x6 0.79-0.88x the step time, seed-384x8 0.77x, tiny 0.93x (docs/speed.md, "Intel Xeon").

The count has to be in place before JAX starts its backends, so the scripts call `use_cores_as_devices` first;
it only adds `--xla_force_host_platform_device_count` to XLA_FLAGS and imports nothing. Only the CPU backend
reads it: on a GPU or TPU the accelerators are still what `jax.devices()` lists. Opt out with
`VIT_CPU_DEVICES=1` (or set any count); an XLA_FLAGS that already names a device count is left alone.
"""
from __future__ import annotations

import os

ENV = "VIT_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"
# Measured at 2 cores only. More devices mean more copies of the parameters and optimiser state (one each)
# and smaller per-device matmuls, so larger CPUs get at most this many until someone measures more.
MAX_DEFAULT_DEVICES = 4


class HostDevicesError(ValueError):
    """VIT_CPU_DEVICES is not a positive whole number; the message names the fix."""


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def device_count(environ=os.environ, cores: int | None = None) -> int:
    """How many CPU devices to ask XLA for: VIT_CPU_DEVICES if set, else one per core up to MAX_DEFAULT_DEVICES."""
    raw = environ.get(ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise HostDevicesError(f"{ENV}={raw!r}: give a whole number of CPU devices, 1 or more "
                                   f"(1 keeps XLA's single CPU device)")
        return int(raw)
    return max(1, min(cores if cores is not None else available_cores(), MAX_DEFAULT_DEVICES))


def use_cores_as_devices(environ=os.environ, cores: int | None = None) -> int | None:
    """Add the CPU device count to XLA_FLAGS; returns it, or None where XLA_FLAGS already has one."""
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return None
    count = device_count(environ, cores)
    if count > 1:
        environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
    return count


def use_cores_as_devices_or_exit(environ=os.environ) -> None:
    """`use_cores_as_devices` for a script's first lines: a bad VIT_CPU_DEVICES exits with its one-line error."""
    try:
        use_cores_as_devices(environ)
    except HostDevicesError as error:
        raise SystemExit(f"error: {error}") from None
