"""Run ablation grids: `python scripts/ablate.py --grid patch --dataset cifar10 --data-dir DIR --epochs 3 --out DIR`.

Writes runs.jsonl, results.csv, results.md and accuracy.png into --out (see jax_vit/ablation/).
"""
from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys

if __name__ == "__main__":  # first, so the re-executed process repeats nothing
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()  # tcmalloc: XLA:CPU's per-step buffers (see jax_vit/allocator.py)

from jax_vit.ablation.grids import BASE_FIELDS, GRIDS, AblationError, recipe_grid_ignores
from jax_vit.ablation.runner import run_grid
from jax_vit.configs import POSITIVE, POSITIVE_INT, SEED, ConfigError, Range, get_config, parse_overrides
from jax_vit.data import DATASETS, DataError, load_dataset
from jax_vit.train import configure_for_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True,
                        help=f"comma-separated grids, or 'all': {', '.join(GRIDS)}")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", required=True, help="folder holding the dataset (see jax_vit/data.py)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=POSITIVE_INT.parse, help="the same number of epochs for every run")
    budget.add_argument("--budget-minutes", type=POSITIVE.parse, help="training minutes per run (epochs from speed)")
    parser.add_argument("--preset", default="tiny", help="base preset: model size and recipe of every run")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config field")
    parser.add_argument("--settings", help="with one grid: only these of its settings, comma-separated "
                        "(names as in its results.md), for example --settings 'best,heavy-aug'")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds, for example 0,1,2")
    parser.add_argument("--val-fraction", type=Range(0, 1, low_open=True, high_open=True).parse, default=0.1,
                        help="share of each class's training images held out to choose settings on")
    parser.add_argument("--out", required=True, help="output folder (resumes the runs already in it)")
    return parser.parse_args(argv)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds:  # "," would run no seed at all and report success
        raise AblationError(f"--seeds {text!r}: expected comma-separated integers, for example 0,1,2")
    for seed in seeds:
        if not SEED.contains(seed):
            raise AblationError(f"--seeds {text!r}: seed {seed} is out of range: use {SEED}")
    return seeds


def machine_header(argv: list[str]) -> str:
    import jax

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"Machine: {platform.machine()} {jax.default_backend()} ({devices}), "
            f"Python {platform.python_version()}, jax {jax.__version__}. "
            f"Command: `python scripts/ablate.py {shlex.join(argv)}`. Load at start: `{load}`.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        grids = list(GRIDS) if args.grid == "all" else [g.strip() for g in args.grid.split(",") if g.strip()]
        unknown = [g for g in grids if g not in GRIDS]
        if unknown or not grids:
            raise AblationError(f"unknown grid {unknown}; choose from: {', '.join(GRIDS)} or all")
        seeds = parse_seeds(args.seeds)
        settings = None
        if args.settings is not None:
            if len(grids) != 1:
                raise AblationError("--settings names the settings of one grid: give a single --grid")
            settings = [name.strip() for name in args.settings.split(",") if name.strip()]
        overrides = parse_overrides(args.set)
        config = get_config(args.preset, overrides)  # a bad --set fails before the dataset is read
        dataset = load_dataset(args.dataset, args.data_dir)
        base = configure_for_dataset(config, dataset)
        ignored = recipe_grid_ignores(overrides) if "best" in grids else []
        if ignored:
            print(f"note: --set {', '.join(ignored)} does not apply to the best grid: each recipe keeps its own "
                  f"(it takes only {', '.join(BASE_FIELDS)} from the base)", file=sys.stderr)
        header = machine_header(argv)
        for grid in grids:
            run_grid(grid, base, dataset, args.out, epochs=args.epochs, budget_minutes=args.budget_minutes,
                     seeds=seeds, settings=settings, val_fraction=args.val_fraction, header=header)
    except (AblationError, ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; the same command continues: finished runs are kept in {args.out}/runs.jsonl and the "
              f"interrupted one resumes from its last epoch", file=sys.stderr)
        return 130
    print(f"wrote {args.out}/results.csv, results.md, accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
