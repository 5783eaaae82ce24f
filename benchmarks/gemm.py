"""The dense layers' matmuls by role, JAX (XLA:CPU) against PyTorch: how much of a CPU gap the kernels alone set.

    python -m benchmarks.gemm --config seed-384x8 --batch-size 32 [--cores 1] \\
        --out results/cpu/<kind>/gemm_seed-384x8.json

For each dense layer of an encoder block (qkv, proj, fc1, fc2), at the rows one micro-batch of the production
CPU step has (batch / micro-batches x tokens, micro-batches as the step picks them on this machine's cores),
three float32 products: the forward x.W, the input gradient g.W^T and the weight gradient x^T.g. The JAX side
spells them as `jax_vit.model._matmul` and its VJP do (so XLA:CPU hands each to the library it picks in the
step: a YNNPACK fusion, or its own dot thunk, Eigen); the PyTorch side as nn.Linear's autograd does with its
[out, in] weight (x.W^T, g.W, g^T.x on strided views, MKL's sgemm). Each product is timed alone, back to back,
medians of interleaved repeats: GFLOP/s, the JAX/PyTorch time ratio, and which library XLA gave the dot.

`--cores N` pins the process to its first N allowed CPUs before either framework starts a thread pool (both
size theirs by the affinity mask, and torch is set to N threads): `--cores 1` compares the kernels without
threading. Products timed alone are an upper bound on what a step gets from them (docs/speed.md, "The matmul
kernels by role"); `benchmarks.step_profile` prices them inside the step.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

if __name__ == "__main__":  # the same allocator as scripts/benchmark.py (see jax_vit/allocator.py)
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as scripts/benchmark.py

from benchmarks.breakdown import step_timer  # noqa: E402
from jax_vit.configs import get_config, parse_overrides  # noqa: E402
from jax_vit.train_step import available_cores, micro_batch_count  # noqa: E402

SCHEMA = "vit-gemm/1"
ROLES = ("forward", "input gradient", "weight gradient")


class GemmError(ValueError):
    """Bad options: the message names the fix."""


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each dense layer of a block."""
    return {"qkv": (config.width, 3 * config.width), "proj": (config.width, config.width),
            "fc1": (config.width, config.mlp_dim), "fc2": (config.mlp_dim, config.width)}


def pin_cores(count: int) -> list[int]:
    """Restrict this process to its first `count` allowed CPUs; call before JAX's backend or torch starts."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(allowed):
        raise GemmError(f"--cores {count}: this process may use 1 to {len(allowed)} CPUs")
    os.sched_setaffinity(0, allowed[:count])
    return allowed[:count]


def _jax_products(rows: int, fan_in: int, fan_out: int, rng) -> dict[str, tuple]:
    """role -> (fn that runs the compiled product and waits for it, library): what `_matmul`'s VJP hands XLA."""
    import jax
    import jax.numpy as jnp

    dot = jax.lax.dot_general
    x = jnp.asarray(rng.standard_normal((rows, fan_in), dtype="float32"))
    g = jnp.asarray(rng.standard_normal((rows, fan_out), dtype="float32"))
    kernel = jnp.asarray(rng.standard_normal((fan_in, fan_out), dtype="float32"))
    spelled = {  # as jax_vit.model._matmul and _matmul_bwd write them
        "forward": (lambda x, k: dot(x, k, (((1,), (0,)), ((), ()))), (x, kernel)),
        "input gradient": (lambda g, k: dot(g, k, (((1,), (1,)), ((), ()))), (g, kernel)),
        "weight gradient": (lambda x, g: dot(x, g, (((0,), (0,)), ((), ()))), (x, g)),
    }
    products = {}
    for role, (fn, args) in spelled.items():
        compiled = jax.jit(fn).lower(*args).compile()
        library = "ynnpack" if "__ynn_fusion" in compiled.as_text() else "xla dot (eigen)"
        products[role] = (lambda c=compiled, a=args: c(*a).block_until_ready(), library)
    return products


def _torch_products(rows: int, fan_in: int, fan_out: int, rng) -> dict[str, object]:
    """role -> fn: nn.Linear's forward and autograd products with its [out, in] weight."""
    import torch

    x = torch.from_numpy(rng.standard_normal((rows, fan_in), dtype="float32"))
    g = torch.from_numpy(rng.standard_normal((rows, fan_out), dtype="float32"))
    weight = torch.from_numpy(rng.standard_normal((fan_out, fan_in), dtype="float32"))
    return {"forward": lambda: x @ weight.T, "input gradient": lambda: g @ weight, "weight gradient": lambda: g.T @ x}


def _median_seconds(runs: dict, repeats: int, calls: int) -> dict:
    """Median seconds a call, repeats interleaved across the products (each fn waits for its own result)."""
    timers = {key: step_timer(run, lambda out: None, calls) for key, run in runs.items()}
    for timer in timers.values():  # pack, fault the pages in
        timer()
    times = {key: [] for key in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            times[key].append(timer())
    return {key: statistics.median(values) for key, values in times.items()}


def measure(config, rows: int, repeats: int, calls: int) -> list[dict]:
    import numpy as np

    runs, libraries = {}, {}
    for layer, (fan_in, fan_out) in layer_shapes(config).items():
        jax_products = _jax_products(rows, fan_in, fan_out, np.random.default_rng(0))
        torch_products = _torch_products(rows, fan_in, fan_out, np.random.default_rng(0))
        for role in ROLES:
            runs[("jax", layer, role)], libraries[(layer, role)] = jax_products[role]
            runs[("torch", layer, role)] = torch_products[role]
    seconds = _median_seconds(runs, repeats, calls)
    results = []
    for layer, (fan_in, fan_out) in layer_shapes(config).items():
        flops = 2 * rows * fan_in * fan_out
        for role in ROLES:
            jax_s, torch_s = seconds[("jax", layer, role)], seconds[("torch", layer, role)]
            results.append({"layer": layer, "role": role, "rows": rows, "in": fan_in, "out": fan_out,
                            "jax_library": libraries[(layer, role)],
                            "jax_ms": 1e3 * jax_s, "torch_ms": 1e3 * torch_s,
                            "jax_gflops": flops / jax_s / 1e9, "torch_gflops": flops / torch_s / 1e9,
                            "jax_over_torch_time": jax_s / torch_s})
    return results


def summary(results: list[dict]) -> dict[str, float]:
    """Per role and over all products: total JAX time over total PyTorch time (FLOP-weighted, as a step is)."""
    out = {}
    for role in (*ROLES, "all"):
        rows = [r for r in results if role in ("all", r["role"])]
        out[role] = sum(r["jax_ms"] for r in rows) / sum(r["torch_ms"] for r in rows) if rows else float("nan")
    return out


def format_table(report: dict) -> str:
    s = report["settings"]
    lines = [f"{s['preset']}: {s['rows']} rows ({s['micro_batches']} micro-batches of batch {s['batch_size']}), "
             f"float32, {s['cores']} core(s), {report['machine']['cpu']}; medians of {s['repeats']} x {s['calls']}",
             f"{'layer':6s} {'role':16s} {'shape':>16s} {'jax GFLOP/s':>12s} {'torch':>7s} {'jax/torch time':>15s}  "
             f"jax library"]
    for r in report["results"]:
        shape = f"{r['rows']}x{r['in']}x{r['out']}"
        lines.append(f"{r['layer']:6s} {r['role']:16s} {shape:>16s} {r['jax_gflops']:12.0f} {r['torch_gflops']:7.0f} "
                     f"{r['jax_over_torch_time']:15.3f}  {r['jax_library']}")
    lines += [f"jax/torch time, {role}: {ratio:.3f}" for role, ratio in report["summary"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="seed-384x8")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, as in train.py")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cores", type=int, help="pin to this many CPUs first (default: all allowed)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3, help="calls per product per repeat")
    parser.add_argument("--out", help="JSON record (written atomically)")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1 or args.repeats < 1 or args.calls < 1:
            raise GemmError("--batch-size, --repeats and --calls must be at least 1")
        config = get_config(args.config, parse_overrides(args.set))
        # The step's slices on this machine's cores, decided before pinning, so --cores 1 times the same shapes.
        micro = micro_batch_count(config, args.batch_size, platform="cpu")
        rows = -(-args.batch_size // micro) * (config.num_patches + 1)  # array_split's first (largest) slice
        cores = len(pin_cores(args.cores)) if args.cores is not None else available_cores()
    except ValueError as error:  # GemmError, and get_config's and parse_overrides' ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(cores)
    from benchmarks.speed import command_line, machine_record, versions, write_json_atomic

    results = measure(config, rows, args.repeats, args.calls)
    import jax

    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(), "machine": machine_record([str(jax.devices()[0])]), "versions": versions(),
        "settings": {"preset": args.config, "overrides": args.set or [], "batch_size": args.batch_size,
                     "micro_batches": micro, "rows": rows, "cores": cores, "repeats": args.repeats,
                     "calls": args.calls,
                     "notes": "Each product alone, float32, both frameworks in one process, interleaved; "
                              "JAX as jax_vit.model._matmul's VJP spells it, PyTorch as nn.Linear's autograd."},
        "results": results, "summary": summary(results),
    }
    print(format_table(report))
    if args.out:
        write_json_atomic(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
