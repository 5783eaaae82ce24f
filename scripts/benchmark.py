"""JAX vs PyTorch training speed for one ViT preset, side by side in one process on one device.

    python scripts/benchmark.py --config seed-384x8 --batch-size 512 --steps 20 \
        --frameworks jax,torch,torch-compile --data-dir ../shared/data --out results/gpu/benchmark.json

With --timm ARCH (e.g. vit_base_patch16_224) it times fine-tuning instead: our JAX step (scripts/finetune.py's,
--config a fine-tuning preset, default finetune-sgd) against timm's own ARCH eager (torch) and compiled
(torch-compile) at --resolution, on the same random weights (benchmarks/finetune_speed.py).

Prints a table and writes every figure, the device, versions and machine load as JSON (see README, "Speed: JAX vs PyTorch").
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # first, so the re-executed process repeats nothing
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()  # tcmalloc: XLA:CPU's per-step buffers (see jax_vit/allocator.py)

# JAX would otherwise take 75% of GPU memory at start-up and leave PyTorch, in the same process, short.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# PyTorch's OpenMP threads busy-wait between parallel regions; on a CPU shared with other work that made
# eager PyTorch 6-10x slower here (see README, "Speed: JAX vs PyTorch"). Passive waiting measures PyTorch at its best.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No compilation caches (and a fresh kernel folder), so torch.compile's first step is a cold compile, as
# JAX's is (no persistent compilation cache).
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="benchmark-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

from jax_vit.configs import (COUNT, FINETUNE_PRESETS, POSITIVE_INT, PRESETS, ConfigError, get_config,  # noqa: E402
                             parse_overrides)
from jax_vit.data import DataError, load_dataset  # noqa: E402
from benchmarks.speed import (  # noqa: E402
    BenchmarkError, build_report, command_line, format_table, parse_frameworks, run_benchmark, write_json_atomic,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help=f"preset: {', '.join(PRESETS)} (default seed-384x8); with "
                        f"--timm: {', '.join(FINETUNE_PRESETS)} (default finetune-sgd)")
    parser.add_argument("--timm", metavar="ARCH", help="time fine-tuning timm's ARCH (vit_small_patch16_224, "
                        "vit_base_patch16_224, ...) against our JAX step on the same weights")
    parser.add_argument("--resolution", type=POSITIVE_INT.parse, default=224, help="with --timm: input size")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--batch-size", type=POSITIVE_INT.parse, default=512)
    parser.add_argument("--steps", type=POSITIVE_INT.parse, default=20, help="timed steps per repetition")
    parser.add_argument("--repeats", type=POSITIVE_INT.parse, default=5,
                        help="interleaved repetitions (medians reported)")
    parser.add_argument("--warmup-steps", type=COUNT.parse, default=3,
                        help="untimed steps after the first (compiling) one")
    parser.add_argument("--frameworks", default="jax,torch,torch-compile")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="CIFAR-10 data (e.g. ../shared/data) for the end-to-end epoch timing; omit to skip it")
    parser.add_argument("--epoch-repeats", type=POSITIVE_INT.parse, default=1,
                        help="epochs per framework on the real data")
    parser.add_argument("--loader-workers", type=COUNT.parse, default=2,
                        help="PyTorch DataLoader worker processes (0: load in the main process)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.timm:
        return _finetune_main(args)
    args.config = args.config or "seed-384x8"
    try:
        frameworks = parse_frameworks(args.frameworks)
        config = get_config(args.config, parse_overrides(args.set))
        dataset = load_dataset("cifar10", args.data_dir) if args.data_dir is not None else None
        if dataset is not None and len(dataset.train_images) < args.batch_size:
            raise BenchmarkError(f"--batch-size {args.batch_size} is larger than the {len(dataset.train_images)} "
                                 f"training images in {args.data_dir}; lower it or drop --data-dir")
        run = run_benchmark(
            config, frameworks=frameworks, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
            warmup_steps=args.warmup_steps, dataset=dataset, epoch_repeats=args.epoch_repeats,
            loader_workers=args.loader_workers, progress=not args.no_progress,
        )
    except (ConfigError, DataError, BenchmarkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = build_report(run, preset=args.config, command=command_line())
    print(format_table(report))
    write_json_atomic(report, args.out)
    print(f"wrote {args.out}")
    return 0


def _finetune_main(args) -> int:
    from benchmarks.finetune_speed import build_finetune_report, run_finetune_benchmark
    from jax_vit.pretrained import PretrainedError

    try:
        if args.data_dir is not None:
            raise BenchmarkError("--data-dir (the epoch timing) is not offered with --timm: drop it")
        preset = args.config or "finetune-sgd"
        if preset not in FINETUNE_PRESETS:
            raise BenchmarkError(f"--config {preset!r} with --timm: choose a fine-tuning preset, "
                                 f"{', '.join(FINETUNE_PRESETS)}")
        run = run_finetune_benchmark(
            args.timm, preset=preset, overrides=parse_overrides(args.set), frameworks=parse_frameworks(args.frameworks),
            batch_size=args.batch_size, steps=args.steps, repeats=args.repeats, warmup_steps=args.warmup_steps,
            resolution=args.resolution, progress=not args.no_progress,
        )
    except (ConfigError, BenchmarkError, PretrainedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # timm's "Unknown model (...)"
        if "Unknown model" not in str(error):
            raise
        print(f"error: --timm {args.timm}: {error}; name a timm ViT such as vit_base_patch16_224", file=sys.stderr)
        return 2
    report = build_finetune_report(run, command=command_line())
    print(format_table(report))
    write_json_atomic(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
