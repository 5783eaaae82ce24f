"""Evaluate a trained run: `python scripts/evaluate.py --workdir runs/tiny [--checkpoint best|latest]`.

Prints the test accuracy and per-class accuracy; writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png.
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the --workdir of a scripts/train.py run")
    parser.add_argument("--data-dir", help="dataset folder (default: the one the run was trained from)")
    parser.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's info/warning chatter
    from jax_vit.data import DataError
    from jax_vit.evaluate import evaluate_run
    from jax_vit.train import TrainingError

    try:
        report = evaluate_run(args.workdir, data_dir=args.data_dir, checkpoint=args.checkpoint)
    except (DataError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint} checkpoint (epoch {report['epoch']}, step {report['step']}, {report['weights']} weights): "
          f"test accuracy {report['test_acc']:.4f} on {report['num_test_images']} images")
    for name, accuracy in report["per_class_acc"].items():
        print(f"  {name:>12s}  {accuracy:.4f}")
    print(f"wrote {Path(args.workdir) / 'eval.json'} and {Path(args.workdir) / 'confusion_matrix.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
