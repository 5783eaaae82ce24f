"""Fine-tune a pretrained ViT: `python scripts/finetune.py --pretrained NAME|PATH --dataset cifar10 --data-dir data --workdir runs/ft`.

NAME is a Hugging Face Hub repo (timm/vit_base_patch16_224.augreg_in21k, google/vit-base-patch16-224-in21k), read
from the local cache unless --download; PATH a timm/transformers safetensors file or folder, a ViT authors' .npz,
or a scripts/train.py workdir. Writes WORKDIR/{run.json, metrics.jsonl, checkpoints/, summary.json, curves.png}
as scripts/train.py does; scripts/evaluate.py reads the workdir.
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
    from jax_vit.configs import POSITIVE_INT, SEED, Range
    from jax_vit.data import DATASETS
    from jax_vit.distributed import add_arguments, check_arguments
    from jax_vit.finetune import DEFAULT_PRESET, FINETUNE_PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, metavar="NAME|PATH", help="checkpoint: Hub repo id or local path")
    parser.add_argument("--config", default=DEFAULT_PRESET, choices=list(FINETUNE_PRESETS),
                        help=f"recipe preset (default {DEFAULT_PRESET}: the ViT authors' SGD transfer recipe)")
    parser.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    parser.add_argument("--data-dir", default="data", help="folder with the dataset (default ./data)")
    parser.add_argument("--workdir", required=True, help="folder for checkpoints, metrics and plots")
    parser.add_argument("--resolution", type=POSITIVE_INT.parse,
                        help="model input size; images are resized to it inside the step (default: the checkpoint's)")
    parser.add_argument("--steps", type=POSITIVE_INT.parse, help="optimiser steps (warm-up: a tenth of them)")
    parser.add_argument("--batch-size", type=POSITIVE_INT.parse, help="global batch size, split over all local devices")
    parser.add_argument("--seed", type=SEED.parse, help="seed for the head, data order and augmentation")
    parser.add_argument("--val-fraction", type=Range(0, 1, high_open=True).parse, default=0.0,
                        help="hold out this share of the training images and score it each epoch instead of the "
                             "test set (e.g. 0.02 for choosing the learning rate); the test set is scored at the end")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set learning_rate=0.01 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --workdir")
    parser.add_argument("--download", action="store_true",
                        help="fetch a missing checkpoint (Hugging Face Hub) and missing dataset files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    add_arguments(parser)
    return check_arguments(parser, parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's info/warning chatter
    from jax_vit.configs import ConfigError, parse_overrides
    from jax_vit.data import DataError, load_dataset
    from jax_vit.distributed import DEFAULT_TIMEOUT_S, DistributedError, exit_code, initialize, is_primary
    from jax_vit.finetune import finetune
    from jax_vit.pretrained import PretrainedError
    from jax_vit.pretrained.hub import resolve
    from jax_vit.train import TrainingError

    try:
        if args.distributed:  # before anything touches a device
            initialize(args.peer_timeout or DEFAULT_TIMEOUT_S)
        overrides = parse_overrides(args.overrides)
        for flag, key in (("batch_size", "batch_size"), ("seed", "seed")):
            if getattr(args, flag) is not None:
                overrides[key] = getattr(args, flag)
        resolve(args.pretrained, download=args.download)  # a missing checkpoint fails before the data is read
        dataset = load_dataset(args.dataset, args.data_dir, download=args.download)
        summary = finetune(args.pretrained, dataset, args.workdir, preset=args.config, overrides=overrides,
                           resolution=args.resolution, steps=args.steps, val_fraction=args.val_fraction,
                           resume=args.resume, overwrite=args.overwrite, download=args.download,
                           data_dir=args.data_dir, progress=not args.no_progress)
    except (ConfigError, DataError, PretrainedError, TrainingError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code(2)
    except KeyboardInterrupt:
        print(f"interrupted; continue with the same command plus --resume (workdir {args.workdir})", file=sys.stderr)
        return exit_code(130)
    if summary["epochs"] and is_primary():  # one report, not one per process
        split = "validation" if args.val_fraction else "test"
        length = (f"{summary['config']['total_steps']} steps" if summary["config"]["total_steps"]
                  else f"{summary['epochs']} epochs")
        print(f"final {split} accuracy {summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f}) after "
              f"{length}; results in {args.workdir}")
        if "test_eval" in summary:
            print(f"test accuracy of the final weights {summary['test_eval']['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
