"""Where the production train step's time goes, kernel by kernel, from XLA's own trace.

    python -m benchmarks.step_profile --config seed-256x6 --batch-size 128 --steps 2 [--top 30] [--out F.json]

Traces `--steps` steady steps of the benchmark's step (`benchmarks.runners.JaxRunner`: the production step
on one device) with `jax.profiler.trace`, reads the Perfetto trace it writes, and adds up the time of every
kernel the step ran, grouped by what the optimised HLO says each one is: which library ran it (YNNPACK,
XNNPACK or oneDNN fusions, XLA's own fusions, plain dots and copies), its output shape and the JAX operation
it came from (`transpose(jvp(...))` marks the backward pass). Times are per step, summed over the executor
threads, so they can add up to more than the step's wall time when kernels overlap; the `busy` figure is
that sum over (wall time x cores).

One blind spot: XLA's Eigen dots (the `dot` rows) hand their work to Eigen's own thread pool, whose threads
the trace does not show, so those rows hold only the dispatch. `benchmarks/op_breakdown.py` times the same
pieces alone, against PyTorch.
"""
from __future__ import annotations

import collections
import datetime
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # the same allocator as scripts/benchmark.py (see jax_vit/allocator.py)
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()

import jax  # noqa: E402

from benchmarks.runners import JaxRunner, synthetic_batch  # noqa: E402
from benchmarks.speed import BenchmarkError, command_line, machine_record, versions, write_json_atomic  # noqa: E402
from benchmarks.xla_options import LIBRARY_FUSIONS, step_arguments  # noqa: E402
from jax_vit.configs import get_config, parse_overrides  # noqa: E402
from jax_vit.train_step import micro_batch_count  # noqa: E402

SCHEMA = "vit-step-profile/1"
# HLO instructions whose spans contain other kernels' spans (counting them would count those twice).
CONTAINERS = ("while", "call", "conditional")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\S+) (?P<op>[\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')


def hlo_index(hlo_text: str) -> dict[str, dict[str, str]]:
    """Instruction name -> its kind (the kernel library for a library fusion, else the HLO opcode), output
    shape and JAX op name, from `compiled.as_text()`."""
    index = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        kind = match["op"]
        for library, fusion_kind in LIBRARY_FUSIONS.items():
            if f'"kind":"{fusion_kind}"' in line:
                kind = library
        op_name = _OP_NAME.search(line)
        index[match["name"]] = {"kind": kind, "shape": match["shape"],
                                "op_name": op_name["op_name"].removeprefix("jit(<lambda>)/") if op_name else ""}
    return index


def kernel_events(trace: dict | list, index: dict[str, dict[str, str]]) -> list[tuple[str, float]]:
    """(name, microseconds) of every complete span in a Perfetto/Chrome trace that is one of the program's
    kernels: named by an HLO instruction of `index`, not a container. The runtime's own spans (dispatch,
    argument handling, thread-pool bookkeeping) and the zero-length 'end:' markers are left out."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [(e["name"], float(e["dur"])) for e in events
            if e.get("ph") == "X" and "dur" in e and e.get("name") in index
            and index[e["name"]]["kind"] not in CONTAINERS]


def group_kernels(events: list[tuple[str, float]], index: dict[str, dict[str, str]], steps: int) -> list[dict]:
    """Per-step milliseconds by (kind, shape, JAX op name), largest first."""
    totals = collections.Counter()
    counts = collections.Counter()
    example = {}
    for name, micros in events:
        info = index[name]
        key = (info["kind"], info["shape"], info["op_name"])
        totals[key] += micros
        counts[key] += 1
        example.setdefault(key, name)
    return [{"kind": kind, "shape": shape, "op_name": op_name, "ms_per_step": micros / 1e3 / steps,
             "kernels_per_step": counts[(kind, shape, op_name)] / steps, "example": example[(kind, shape, op_name)]}
            for (kind, shape, op_name), micros in totals.most_common()]


def by_kind(rows: list[dict]) -> dict[str, float]:
    totals = collections.Counter()
    for row in rows:
        totals[row["kind"]] += row["ms_per_step"]
    return {kind: round(ms, 1) for kind, ms in totals.most_common()}


def profile_step(config, batch_size: int, steps: int, trace_dir: str) -> dict:
    images, labels = synthetic_batch(config, batch_size)
    runner = JaxRunner(config, images, labels)
    runner.first_step()
    runner.run(2)  # steady state: first-run allocations and page faults out of the trace
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        seconds = runner.run(steps)
    traces = sorted(Path(trace_dir).rglob("*perfetto_trace.json.gz"))
    if not traces:
        raise BenchmarkError(f"jax.profiler wrote no Perfetto trace under {trace_dir} (jax {jax.__version__})")
    with gzip.open(traces[-1], "rt") as handle:
        trace = json.load(handle)
    index = hlo_index(runner.compiled.as_text())
    rows = group_kernels(kernel_events(trace, index), index, steps)
    kernel_ms = sum(row["ms_per_step"] for row in rows)
    step_ms = 1e3 * seconds / steps
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"step_ms": step_ms, "kernel_ms_per_step": kernel_ms, "cores": cores, "busy": kernel_ms / (step_ms * cores),
            "by_kind": by_kind(rows), "rows": rows, "device": runner.device_name,
            "jax_micro_batches": micro_batch_count(config, batch_size)}


def format_table(profile: dict, top: int) -> str:
    lines = [f"step {profile['step_ms']:.0f} ms (traced), kernels {profile['kernel_ms_per_step']:.0f} ms a step "
             f"summed over threads, busy {100 * profile['busy']:.0f}% of {profile['cores']} cores",
             "by kind (ms/step): " + ", ".join(f"{k} {v:.0f}" for k, v in profile["by_kind"].items()),
             f"{'ms/step':>8s} {'n':>4s}  {'kind':8s} {'shape':30s} op"]
    for row in profile["rows"][:top]:
        lines.append(f"{row['ms_per_step']:8.1f} {row['kernels_per_step']:4.0f}  {row['kind']:8s} "
                     f"{row['shape'][:30]:30s} {row['op_name'][-70:]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = step_arguments(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="steps traced")
    parser.add_argument("--top", type=int, default=30, help="rows printed (all go to --out)")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.batch_size < 1:
            raise BenchmarkError("--steps and --batch-size must be at least 1")
        config = get_config(args.config, parse_overrides(args.set)).replace(batch_size=args.batch_size)
        with tempfile.TemporaryDirectory(prefix="step-profile-") as trace_dir:
            started = time.perf_counter()
            profile = profile_step(config, args.batch_size, args.steps, trace_dir)
    except (BenchmarkError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(profile, args.top))
    if args.out:
        write_json_atomic({
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(), "machine": machine_record([profile.pop("device")]), "versions": versions(),
            "settings": {"preset": args.config, "overrides": args.set or [], "batch_size": args.batch_size,
                         "steps_traced": args.steps, "jax_micro_batches": profile.pop("jax_micro_batches"),
                         "wall_s": round(time.perf_counter() - started, 1)},
            "profile": profile,
        }, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
