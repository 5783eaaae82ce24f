"""XLA compiler options against the production train step, A/B in one process, steps interleaved.

    python -m benchmarks.xla_options --config seed-256x6 --batch-size 128 \\
        --variant "no-ynn:xla_cpu_experimental_ynn_fusion_type=" \\
        --variant "scheduler:xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED" \\
        --rounds 8 --steps 2 --out results/cpu/<kind>/xla_options_seed-256x6.json

Why not separate `scripts/benchmark.py` processes with different `XLA_FLAGS`: on a shared 2-core VM the
machine's own speed drifts by 15-30 % within minutes, more than most options move the step. Here the step
is lowered once and compiled once per variant (`Lowered.compile(compiler_options=...)`, the per-program form
of `XLA_FLAGS`), and every round runs each variant's steps back to back on the same state, in alternating
order, so drift falls on all variants alike; the figure to read is the median of the per-round ratios to
the baseline (the default options). A variant whose optimised HLO is identical to an earlier one's (the
default's or another variant's) names it (`same_hlo_as`): unless the option acts only in LLVM's code
generation or at run time (`xla_cpu_prefer_vector_width`, `xla_cpu_max_isa`, `xla_cpu_multi_thread_eigen`),
the two run the same program, so the gap between their ratios is the noise floor of the run.

A variant is `NAME:OPTION=VALUE[;OPTION=VALUE...]`, options as `XLA_FLAGS=--help` lists them (without the
leading dashes); enum-list values are given in full (`LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE`),
since the flag parser's +/- shorthand does not apply here. A key that does not start with `xla_` is a config
override instead, as `--set` takes it (`"one-slice:micro_batches=1"`): that variant's step is built from the
changed config and run on the same train state, so the override must leave the state's structure alone
(micro-batches, GELU form, attention, dropout rates: yes; width, EMA, optimizer: compare those with separate
`scripts/benchmark.py` runs).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the same allocator as scripts/benchmark.py (see jax_vit/allocator.py)
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.runners import SCHEDULE_STEPS_PER_EPOCH, JaxRunner, synthetic_batch  # noqa: E402
from benchmarks.speed import BenchmarkError, command_line, machine_load, machine_record, versions, write_json_atomic  # noqa: E402
from jax_vit.configs import get_config, parse_overrides  # noqa: E402
from jax_vit.model import compute_dtype  # noqa: E402
from jax_vit.train_step import init_train_state, make_recipe, make_train_step, micro_batch_count  # noqa: E402

SCHEMA = "vit-xla-options/1"
BASELINE = "default"
XLA_PREFIX = "xla_"  # variant keys with it are XLA compiler options, the others config overrides
# Kernel libraries XLA:CPU hands fusions to, as their fusion kinds appear in the optimised HLO.
LIBRARY_FUSIONS = {"ynnpack": "__ynn_fusion", "xnnpack": "__xnn_fusion", "onednn": "__onednn_fusion"}


def _typed(value: str) -> str | bool | int:
    """XLA takes a bool or int option only as that type, not as its spelling."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return int(value) if value.lstrip("-").isdigit() else value


def parse_variant(text: str) -> tuple[str, dict[str, str | bool | int]]:
    """'NAME:OPTION=VALUE;OPTION=VALUE' -> (NAME, {OPTION: VALUE}); a value may be empty. XLA options are
    typed here; config overrides stay strings, for `get_config` to parse."""
    name, sep, spec = text.partition(":")
    name = name.strip()
    if not sep or not name or name == BASELINE:
        raise BenchmarkError(f"--variant {text!r}: write NAME:OPTION=VALUE[;OPTION=VALUE...], NAME not "
                             f"{BASELINE!r} (the baseline is always run)")
    options = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not eq or not key:
            raise BenchmarkError(f"--variant {text!r}: {item!r} is not OPTION=VALUE")
        options[key] = _typed(value.strip()) if key.startswith(XLA_PREFIX) else value.strip()
    if not options:
        raise BenchmarkError(f"--variant {text!r}: name at least one OPTION=VALUE after the colon")
    return name, options


def library_fusions(hlo_text: str) -> dict[str, int]:
    """How many fusions of the optimised program each kernel library runs."""
    return {library: hlo_text.count(f'"kind":"{kind}"') for library, kind in LIBRARY_FUSIONS.items()}


def split_variant(spec: dict) -> tuple[dict, dict]:
    """A parsed variant -> (XLA compiler options, config overrides)."""
    options = {k: v for k, v in spec.items() if k.startswith(XLA_PREFIX)}
    return options, {k: v for k, v in spec.items() if k not in options}


def variant_config(config, overrides: dict):
    """`config` with a variant's overrides, parsed and checked as `--set` values are."""
    return get_config("base", overrides, presets={"base": config}) if overrides else config


def lower_variant(runner: JaxRunner, name: str, config):
    """The production step of `config`, lowered for the runner's state and batch."""
    if config == runner.config:
        return runner.train_step.lower(runner.state, runner.images, runner.labels)
    recipe = make_recipe(config, SCHEDULE_STEPS_PER_EPOCH)
    # The step takes its weights' shapes from the state it is given, so a wider model would silently run as
    # the narrow one: compare the state this config would create with the one at hand.
    expected = jax.eval_shape(lambda: init_train_state(recipe))
    if _abstract(expected) != _abstract(runner.state):
        raise BenchmarkError(f"variant {name!r}: its config overrides change the train state (the model's "
                             f"weights or the optimizer's); compare such configs in separate "
                             f"scripts/benchmark.py runs")
    return make_train_step(recipe, runner.mesh).lower(runner.state, runner.images, runner.labels)


def _abstract(tree):
    leaves, structure = jax.tree.flatten(tree)
    return structure, [(leaf.shape, leaf.dtype) for leaf in leaves]


def compile_variants(runner: JaxRunner, variants: dict[str, dict]) -> dict[str, dict]:
    """Each variant's compiled step, with its compile time, optimised-HLO hash, library fusion counts and
    micro-batch count."""
    lowered_by_config = {}
    compiled = {}
    for name, spec in {BASELINE: {}, **variants}.items():
        options, overrides = split_variant(spec)
        config = variant_config(runner.config, overrides)
        key = tuple(sorted(overrides.items()))
        if key not in lowered_by_config:
            lowered_by_config[key] = lower_variant(runner, name, config)
        lowered = lowered_by_config[key]
        start = time.perf_counter()
        try:
            executable = lowered.compile(compiler_options=options) if options else lowered.compile()
        except jax.errors.JaxRuntimeError as error:
            message = str(error).splitlines()[0].removeprefix("INVALID_ARGUMENT: ")
            raise BenchmarkError(f"variant {name!r}: {message} (this jaxlib is {jax.__version__}; "
                                 f"XLA_FLAGS=--help lists the options it knows)") from None
        text = executable.as_text()
        compiled[name] = {"executable": executable, "options": options, "overrides": overrides,
                          "micro_batches": micro_batch_count(config, runner.batch_size),
                          "compile_s": round(time.perf_counter() - start, 2),
                          "hlo_sha1": hashlib.sha1(text.encode()).hexdigest()[:12],
                          "library_fusions": library_fusions(text)}
    return compiled


def interleave(runner: JaxRunner, executables: dict, rounds: int, steps: int, progress=print) -> dict[str, list]:
    """Seconds per step of each variant in every round; variants alternate order between rounds."""
    state = runner.state

    def run(executable) -> float:
        nonlocal state
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps):
            state, _ = executable(state, runner.images, runner.labels)
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / steps

    for executable in executables.values():
        run(executable)  # warm-up: first-run allocations, page faults of the temporaries
    names = list(executables)
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            times[name].append(run(executables[name]))
        progress(f"round {index + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * t[-1]:.0f} ms" for n, t in times.items()))
    runner.state = state
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    """Median and min ms per step, and the per-round ratio to the baseline (median and quartiles)."""
    base = times[BASELINE]
    summary = {}
    for name, values in times.items():
        ratios = [value / reference for value, reference in zip(values, base)]
        quartiles = np.percentile(ratios, [25, 75]) if len(ratios) > 1 else (ratios[0], ratios[0])
        summary[name] = {"step_ms_median": 1e3 * statistics.median(values), "step_ms_min": 1e3 * min(values),
                         "ratio_to_default_median": statistics.median(ratios),
                         "ratio_to_default_quartiles": [float(q) for q in quartiles],
                         "step_ms": [1e3 * value for value in values]}
    return summary


def run_comparison(config, batch_size: int, variants: dict[str, dict], rounds: int, steps: int,
                   progress=print) -> dict:
    images, labels = synthetic_batch(config, batch_size)
    runner = JaxRunner(config, images, labels)
    compiled = compile_variants(runner, variants)
    load_before = machine_load()
    times = interleave(runner, {name: c["executable"] for name, c in compiled.items()}, rounds, steps, progress)
    summary = summarize(times)
    first_with_hash = {}
    for name, c in compiled.items():
        first_with_hash.setdefault(c["hlo_sha1"], name)
    results = {name: {"options": c["options"], "overrides": c["overrides"], "micro_batches": c["micro_batches"],
                      "compile_s": c["compile_s"], "hlo_sha1": c["hlo_sha1"],
                      "same_hlo_as": None if first_with_hash[c["hlo_sha1"]] == name else first_with_hash[c["hlo_sha1"]],
                      "library_fusions": c["library_fusions"], **summary[name]}
               for name, c in compiled.items()}
    return {"results": results, "load": {"before": load_before, "after": machine_load()},
            "jax_micro_batches": micro_batch_count(config, batch_size), "device": runner.device_name}


def format_table(report: dict) -> str:
    lines = [f"{report['settings']['preset']}, batch {report['settings']['batch_size']}, "
             f"{report['settings']['rounds']} rounds x {report['settings']['steps_per_round']} steps on "
             f"{report['machine']['cpu']}",
             f"{'variant':24s} {'ms/step med':>11s} {'min':>7s} {'ratio (q1-q3)':>20s}  library fusions"]
    for name, r in report["results"].items():
        q1, q3 = r["ratio_to_default_quartiles"]
        fusions = ", ".join(f"{k} {v}" for k, v in r["library_fusions"].items() if v) or "none"
        same = f"  (same HLO as {r['same_hlo_as']})" if r["same_hlo_as"] else ""
        if r["micro_batches"] != report["settings"]["jax_micro_batches"]:
            same += f"  ({r['micro_batches']} micro-batches)"
        lines.append(f"{name:24s} {r['step_ms_median']:11.0f} {r['step_ms_min']:7.0f} "
                     f"{r['ratio_to_default_median']:7.3f} ({q1:.3f}-{q3:.3f})  {fusions}{same}")
    return "\n".join(lines)


def step_arguments(doc: str) -> argparse.ArgumentParser:
    """The options both step tools share: which step (preset, overrides, batch) and where the record goes."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--config", default="seed-256x6")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, as in train.py")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", help="JSON record (written atomically)")
    return parser


def main(argv=None) -> int:
    parser = step_arguments(__doc__)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:OPTION=VALUE[;...]")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    args = parser.parse_args(argv)
    try:
        if args.rounds < 1 or args.steps < 1 or args.batch_size < 1:
            raise BenchmarkError("--rounds, --steps and --batch-size must be at least 1")
        variants = dict(parse_variant(text) for text in args.variant)
        if len(variants) != len(args.variant):
            raise BenchmarkError("--variant: each NAME once")
        config = get_config(args.config, parse_overrides(args.set)).replace(batch_size=args.batch_size)
        run = run_comparison(config, args.batch_size, variants, args.rounds, args.steps,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (BenchmarkError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {  # config is bound: the try block returned early otherwise
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(), "machine": machine_record([run["device"]]), "versions": versions(),
        "load": run["load"],
        "settings": {"preset": args.config, "overrides": args.set or [], "batch_size": args.batch_size,
                     "rounds": args.rounds, "steps_per_round": args.steps,
                     "jax_micro_batches": run["jax_micro_batches"], "precision": compute_dtype(config).name,
                     "notes": "One process; the production step compiled once per variant, variants run in "
                              "alternating order each round on the same state. Ratios: per-round time over "
                              "the default's in the same round."},
        "results": run["results"],
    }
    print(format_table(report))
    if args.out:
        write_json_atomic(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
