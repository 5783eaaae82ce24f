"""Command-line pieces shared by scripts/segment.py and scripts/track.py: one place for the model and worker
options and for turning user errors into a one-line message and exit status 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from torch_seg.checkpoints import DEFAULT_GDINO_MODEL, DEFAULT_SAM2_MODEL, GDINO_MODELS, SAM2_MODELS
from torch_seg.device import DEVICE_CHOICES
from torch_seg.errors import UserError
from torch_seg.seeders import DEFAULT_BOX_THRESHOLD, DEFAULT_TEXT_THRESHOLD, SEEDERS


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The seeder, SAM 2.1, checkpoint, threshold and device options, with their defaults."""
    p.add_argument("--sam2-model", default=DEFAULT_SAM2_MODEL, choices=list(SAM2_MODELS))
    p.add_argument("--sam2-checkpoint", metavar="FILE", help="default: checkpoints/sam2.1_hiera_<model>.pt")
    p.add_argument("--seeder", default="gdino", choices=list(SEEDERS))
    p.add_argument("--gdino-model", default=DEFAULT_GDINO_MODEL, choices=list(GDINO_MODELS),
                   help="GroundingDINO backbone: swin_t (OGC, default) or swin_b")
    p.add_argument("--gdino-checkpoint", metavar="FILE", help="default: checkpoints/groundingdino_<model>.pth")
    p.add_argument("--text-encoder", metavar="DIR",
                   help="local bert-base-uncased tokenizer + config.json (default: checkpoints/bert-base-uncased)")
    p.add_argument("--clipseg-model", metavar="DIR", help="local CLIPSeg folder for --seeder clipseg")
    p.add_argument("--box-threshold", type=float, default=DEFAULT_BOX_THRESHOLD)
    p.add_argument("--text-threshold", type=float, default=DEFAULT_TEXT_THRESHOLD)
    p.add_argument("--device", default="auto", choices=list(DEVICE_CHOICES))
    p.add_argument("--random-weights", action="store_true",
                   help="real architectures with random weights, no checkpoints: for tests and trying the plumbing")


def add_worker_arguments(p: argparse.ArgumentParser, items: str) -> None:
    """--num-workers/--worker-index (torch_seg/workers.py) and --redo, the same for images and videos."""
    p.add_argument("--num-workers", type=int, metavar="N",
                   help=f"split the {items} over N workers (default: torchrun's or SLURM's, else 1)")
    p.add_argument("--worker-index", type=int, metavar="K",
                   help=f"this worker's index, 0..N-1: it does every {items[:-1]} i with i %% N == K")
    p.add_argument("--redo", action="store_true",
                   help=f"recompute {items} whose finished results (same settings) are already in --out")


def check_at_least(option: str, value: int | None, minimum: int) -> None:
    """UserError unless the count `value` is at least `minimum` (None: the option was not given)."""
    if value is not None and value < minimum:
        raise UserError(f"{option} must be at least {minimum}, got {value}")


def run_cli(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs `run(args)`; a UserError becomes `error: <message>` and exit status 2, Ctrl-C exit status 130."""
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
