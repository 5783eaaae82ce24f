"""One ablation run through the project's trainer (`jax_vit.train.train_and_evaluate`).

The trainer scores its dataset's test split every epoch; here that split is the validation images carved
from the training set, so every per-epoch number a setting is chosen by comes from training images. The
real test images are scored once, on the final weights restored from the run's last checkpoint.
Runs use one device, so runs on a shared CPU stay comparable. The run's folder is the runner's (it resumes an
interrupted run of the same config, and the runner deletes it once the run is recorded).
"""
from __future__ import annotations

import time
from pathlib import Path

import jax

from jax_vit import reporting
from jax_vit.ablation.grids import AblationError
from jax_vit.configs import Config
from jax_vit.data import Dataset
from jax_vit.model import count_params
from jax_vit.evaluate import score_checkpoint
from jax_vit.train import LossDiverged, TrainingError, configure_for_dataset, train_and_evaluate
from jax_vit.train_step import create_train_state, make_mesh, make_recipe, make_train_step, shard_batch


def _as_dataset(config: Config, train: tuple, evaluation: tuple) -> Dataset:
    return Dataset(
        name=config.dataset, train_images=train[0], train_labels=train[1],
        test_images=evaluation[0], test_labels=evaluation[1],
        class_names=tuple(str(c) for c in range(config.num_classes)), source="ablation split",
    )


def train_and_score(config: Config, train: tuple, val: tuple, test: tuple, workdir: Path) -> dict:
    """Train `config` on `train` in `workdir` (continuing an interrupted run there), validation accuracy per
    epoch, test accuracy of the final weights."""
    devices = jax.local_devices()[:1]
    split = _as_dataset(config, train, val)
    try:
        train_and_evaluate(config, split, workdir, resume=True, devices=devices, progress=False, eval_name="val")
    except LossDiverged as error:
        # Its checkpoints stay in `workdir`; a lower learning rate is a new config, hence a new --out.
        raise AblationError(f"{error.what}; lower the base learning rate (--set learning_rate=...) and give a new "
                            f"--out") from None
    except TrainingError as error:
        raise AblationError(str(error)) from None
    rows = reporting.read_metrics(workdir)
    config = configure_for_dataset(config, split)
    mesh = make_mesh(devices)
    recipe = make_recipe(config, len(train[0]) // config.batch_size)
    # The final weights (the latest checkpoint), not the best by validation: the report's test numbers.
    state, scores = score_checkpoint(workdir, recipe, mesh, test[0], test[1], config.batch_size, "latest")
    test_acc = scores["raw"][1]
    test_acc_ema = scores["ema"][1] if "ema" in scores else None
    history, seconds = [], 0.0
    for row in rows:
        seconds += row["epoch_seconds"]
        history.append({"epoch": row["epoch"], "train_seconds": round(seconds, 1), "train_loss": row["train_loss"],
                        "val_accuracy": row["test_acc"], "val_accuracy_ema": row.get("ema_test_acc")})
    return {
        "params": count_params(state.params),
        "train_seconds": round(seconds, 1),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"],
        "val_accuracy_ema": history[-1]["val_accuracy_ema"],
        "test_accuracy": test_acc,
        "test_accuracy_ema": test_acc_ema,
    }


def seconds_per_epoch(config: Config, train: tuple, warmup_steps: int = 3, timed_steps: int = 8) -> float:
    """Wall seconds one epoch of `config` takes here, from a few steps after the compile (for time budgets).

    The first steps after the compile run 2-3x slower on the CPU (most likely memory touched for the first
    time): timing them gave 8x8 patches 59 epochs in a 2-minute budget that fits about 150, so they run
    untimed first.
    """
    train_images, train_labels = train
    config = config.replace(in_channels=train_images.shape[-1])
    steps_per_epoch = max(len(train_images) // config.batch_size, 1)
    mesh = make_mesh(jax.local_devices()[:1])
    recipe = make_recipe(config, steps_per_epoch)
    state = create_train_state(recipe, mesh)
    train_step = make_train_step(recipe, mesh)
    batch = shard_batch(mesh, train_images[:config.batch_size], train_labels[:config.batch_size])
    for _ in range(1 + warmup_steps):  # the compile, then the slow first steps
        state, metrics = train_step(state, *batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(timed_steps):
        state, metrics = train_step(state, *batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / timed_steps * steps_per_epoch
