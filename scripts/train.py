"""Train a ViT from scratch: `python scripts/train.py --config tiny --dataset cifar10 --data-dir data --workdir runs/tiny`.

Writes WORKDIR/{run.json, metrics.jsonl, checkpoints/, summary.json, curves.png}. See README, "A ViT trained from scratch".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

if __name__ == "__main__":  # first, so the re-executed process repeats nothing
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()  # tcmalloc: XLA:CPU's per-step buffers (see jax_vit/allocator.py)


def parse_args(argv=None) -> argparse.Namespace:
    from jax_vit.configs import PRESETS
    from jax_vit.data import DATASETS
    from jax_vit.distributed import add_arguments, check_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help=f"preset: {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    parser.add_argument("--data-dir", default="data", help="folder with the dataset (default ./data)")
    parser.add_argument("--download", action="store_true", help="fetch the official files into --data-dir if absent")
    parser.add_argument("--workdir", required=True, help="folder for checkpoints, metrics and plots")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, help="global batch size, split over all local devices")
    parser.add_argument("--seed", type=int, help="seed for init, data order and augmentation")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --workdir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set depth=4 --set dropout=0.1 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    add_arguments(parser)
    return check_arguments(parser, parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's info/warning chatter
    from jax_vit.configs import ConfigError, get_config, parse_overrides
    from jax_vit.data import DataError, load_dataset
    from jax_vit.distributed import DEFAULT_TIMEOUT_S, DistributedError, exit_code, initialize, is_primary
    from jax_vit.train import TrainingError, train_and_evaluate

    try:
        if args.distributed:  # before anything touches a device
            initialize(args.peer_timeout or DEFAULT_TIMEOUT_S)
        overrides = parse_overrides(args.overrides)
        for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("seed", "seed")):
            if getattr(args, flag) is not None:
                overrides[key] = getattr(args, flag)
        config = get_config(args.config, overrides)
        dataset = load_dataset(args.dataset, args.data_dir, download=args.download)
        summary = train_and_evaluate(config, dataset, args.workdir, resume=args.resume, overwrite=args.overwrite,
                                     data_dir=args.data_dir, progress=not args.no_progress)
    except (ConfigError, DataError, TrainingError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code(2)
    except KeyboardInterrupt:
        print(f"interrupted; continue with the same command plus --resume (workdir {args.workdir})", file=sys.stderr)
        return exit_code(130)
    if summary["epochs"] and is_primary():  # one report, not one per process
        print(f"best test accuracy {summary['best_test_acc']:.4f}, final {summary['final_test_acc']:.4f} "
              f"after {summary['epochs']} epochs; results in {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
