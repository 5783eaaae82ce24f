"""The `machine` part, one framework per process: devices, versions, and the measured matmul peak.

    python -m benchmarks.gpu_report.machine --framework jax --out machine/jax.json [--smoke]

The peak is a large square matmul (8192 x 8192 in bfloat16 on a GPU: 1.1 TFLOP, a few milliseconds on a
Hopper), timed as the median of a few rounds of back-to-back products after a warm-up, device synchronised.
It is the ceiling a training step's MFU is reported against, beside the data sheet's (`benchmarks.flops`).
On the CPU (`--smoke`) it is float32 and small: the code path, not a figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from jax_vit.reporting import write_json

GPU_SIZE, GPU_DTYPE = 8192, "bfloat16"
SMOKE_SIZE, SMOKE_DTYPE = 1024, "float32"
ROUNDS, PRODUCTS_PER_ROUND = 5, 10


def time_rounds(run_round, rounds: int) -> tuple[float, list[float]]:
    """Seconds of a warm-up round (compilation, kernel choice, clocks up), then of each timed round."""
    start = time.perf_counter()
    run_round()
    warmup_s = time.perf_counter() - start
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_round()
        seconds.append(time.perf_counter() - start)
    return warmup_s, seconds


def jax_record(size: int, dtype_name: str, rounds: int, products: int) -> dict:
    import jax
    import jax.numpy as jnp
    import jaxlib

    from benchmarks import flops

    device = jax.devices()[0]
    dtype = jnp.dtype(dtype_name)
    a, b = (jax.random.normal(key, (size, size), jnp.float32).astype(dtype)
            for key in jax.random.split(jax.random.key(0), 2))
    matmul = jax.jit(jnp.matmul)

    def run_round():
        jax.block_until_ready([matmul(a, b) for _ in range(products)])

    warmup_s, seconds = time_rounds(run_round, rounds)
    try:  # jax's CUDA plugin reports the versions it loaded; absent on the CPU
        from jax._src.lib import cuda_versions
        cuda = {"cuda_runtime": cuda_versions.cuda_runtime_get_version(),
                "cudnn": cuda_versions.cudnn_get_version()} if cuda_versions else {}
    except Exception:  # a private module: its names move between releases
        cuda = {}
    stats = device.memory_stats() or {}
    return {
        "framework": "jax", "platform": device.platform, "device": device.device_kind,
        "devices": [d.device_kind for d in jax.devices()], "platform_version": device.client.platform_version,
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, **cuda},
        "memory_bytes": stats.get("bytes_limit"),
        **_peak(size, dtype_name, products, warmup_s, seconds, flops.peak_flops(device.device_kind)),
    }


def torch_record(size: int, dtype_name: str, rounds: int, products: int) -> dict:
    import torch

    from benchmarks import flops

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    generator = torch.Generator(device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator, device=device).to(getattr(torch, dtype_name))
            for _ in range(2))

    def run_round():
        out = [torch.matmul(a, b) for _ in range(products)]
        if cuda:
            torch.cuda.synchronize(device)
        return out

    warmup_s, seconds = time_rounds(run_round, rounds)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    return {
        "framework": "torch", "platform": device.type, "device": name,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if cuda else None},
        "memory_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
        "torch_threads": torch.get_num_threads(),
        **_peak(size, dtype_name, products, warmup_s, seconds, flops.peak_flops(name)),
    }


def _peak(size: int, dtype_name: str, products: int, warmup_s: float, seconds: list[float],
          datasheet: float | None) -> dict:
    flop = 2 * size**3 * products
    measured = flop / statistics.median(seconds)
    return {
        "matmul": {"size": size, "dtype": dtype_name, "products_per_round": products, "rounds": len(seconds),
                   "warmup_s": warmup_s, "round_seconds": seconds},
        "measured_peak_flops": measured,
        "datasheet_peak_flops": datasheet,
        "measured_over_datasheet": None if datasheet is None else measured / datasheet,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=("jax", "torch"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="float32 and small, for the CPU")
    args = parser.parse_args(argv)
    size, dtype = (SMOKE_SIZE, SMOKE_DTYPE) if args.smoke else (GPU_SIZE, GPU_DTYPE)
    measure = jax_record if args.framework == "jax" else torch_record
    record = measure(size, dtype, rounds=ROUNDS, products=3 if args.smoke else PRODUCTS_PER_ROUND)
    record.update(python=platform.python_version(), cpu_cores=os.cpu_count(), loadavg=list(os.getloadavg()))
    write_json(args.out, record)
    print(f"{args.framework} on {record['device']}: {record['measured_peak_flops'] / 1e9:,.0f} GFLOP/s "
          f"({dtype} {size}x{size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
