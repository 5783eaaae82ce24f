"""Evaluate a run's checkpoint on the test set: accuracy, per-class accuracy, confusion matrix.

`evaluate_run(workdir)` reads the run's own record (`run.json`: config, data folder, class names), so a
workdir is all it needs; writes `eval.json` and `confusion_matrix.png` into it (process 0 only, when several
processes evaluate together over all their devices).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_vit import checkpoints, distributed, reporting
from jax_vit.configs import Config
from jax_vit.data import load_dataset
from jax_vit.train import TrainingError, evaluate, padded_eval_batches
from jax_vit.train_step import make_eval_step, make_mesh, make_recipe


def load_run_config(workdir: Path) -> tuple[Config, dict[str, Any]]:
    record_path = workdir / "run.json"
    if not record_path.exists():
        raise TrainingError(f"{workdir} holds no training run (run.json missing); pass the --workdir of a "
                            f"scripts/train.py run")
    record = reporting.read_json(record_path)
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in record["config"].items() if k in known}), record


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def score_checkpoint(workdir: Path, recipe, mesh, images: np.ndarray, labels: np.ndarray, batch_size: int,
                     checkpoint: str = "best") -> tuple[Any, dict[str, tuple[float, float, np.ndarray]]]:
    """Restore `checkpoint` (best|latest) of the run in `workdir` and score its raw and, where it keeps one, EMA
    weights on (images, labels). Returns (train state, {"raw"|"ema": (loss, accuracy, predictions)})."""
    manager = checkpoints.make_manager(workdir, read_only=True)
    state = checkpoints.restore(manager, recipe, mesh, checkpoint)
    manager.close()
    if state is None:
        raise TrainingError(f"no {checkpoint} checkpoint in {checkpoints.checkpoint_dir(workdir)}; train first")
    batches = padded_eval_batches(mesh, images, labels, batch_size)
    eval_step = make_eval_step(recipe, mesh)
    candidates = {"raw": state.params}
    if state.ema_params is not None:
        candidates["ema"] = state.ema_params
    return state, {name: evaluate(eval_step, params, batches, len(labels)) for name, params in candidates.items()}


def evaluate_run(workdir: str | Path, data_dir: str | None = None, checkpoint: str = "best",
                 devices=None) -> dict[str, Any]:
    workdir = Path(workdir).resolve()
    config, record = load_run_config(workdir)
    if not checkpoints.checkpoint_dir(workdir).is_dir():
        raise TrainingError(f"{workdir} has no checkpoints yet; train (or --resume) until an epoch completes")
    data_dir = data_dir or record.get("data_dir")
    if data_dir is None:
        raise TrainingError("the run does not record its data folder; pass --data-dir")
    dataset = load_dataset(config.dataset, data_dir)

    mesh = make_mesh(devices)
    recipe = make_recipe(config, max(record.get("train_size", 0) // config.batch_size, 1))
    batch_size = config.batch_size - config.batch_size % mesh.devices.size or mesh.devices.size
    labels = dataset.test_labels
    state, scores = score_checkpoint(workdir, recipe, mesh, dataset.test_images, labels, batch_size, checkpoint)
    step = int(jax.device_get(state.step))

    results = {}
    for name, (loss, accuracy, predictions) in scores.items():
        matrix = confusion_matrix(labels, predictions, config.num_classes)
        per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
        results[name] = {
            "test_acc": accuracy,
            "test_loss": loss,
            "per_class_acc": {c: float(a) for c, a in zip(dataset.class_names, per_class)},
            "confusion_matrix": matrix.tolist(),
        }
    weights = max(results, key=lambda name: results[name]["test_acc"])
    report = {
        "checkpoint": checkpoint,
        "step": step,
        "epoch": -(-step // recipe.steps_per_epoch),  # a step-defined run's short last epoch counts
        "weights": weights,  # the better of raw and EMA weights; both are in "by_weights"
        "test_acc": results[weights]["test_acc"],
        "test_loss": results[weights]["test_loss"],
        "per_class_acc": results[weights]["per_class_acc"],
        "num_test_images": int(len(labels)),
        "dataset": config.dataset,
        "data_dir": str(data_dir),
        "by_weights": results,
    }
    if not distributed.is_primary():
        return report
    reporting.write_json(workdir / "eval.json", report)
    reporting.plot_confusion_matrix(
        np.asarray(results[weights]["confusion_matrix"]), list(dataset.class_names), workdir / "confusion_matrix.png",
        f"{config.dataset} test set, {checkpoint} checkpoint (step {step}, {weights} weights): "
        f"accuracy {report['test_acc']:.3f}",
    )
    return report
