"""What a run writes into its workdir, each schema in one place, every file written atomically.

- `run.json`: the config and data source of the run (written first; `--resume` and `evaluate` read it)
- `metrics.jsonl`: one line per epoch (EPOCH_FIELDS and, with EMA on, the EMA's test metrics)
- `summary.json`, `curves.png`: at the end
- `eval.json`, `confusion_matrix.png`: from `scripts/evaluate.py`
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jax_vit.configs import Config, config_changes

EPOCH_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds",
                "images_per_second", "includes_compilation")
RUN_FILES = ("run.json", "metrics.jsonl", "summary.json", "curves.png", "eval.json", "confusion_matrix.png",
             "checkpoints")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write into a temporary sibling, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only; results are for others to read too
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:  # a full disk or Ctrl-C leaves neither half a file nor a stray temporary
        Path(temporary).unlink(missing_ok=True)
        raise


def resume_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What a run to be continued changed since it started, from two run.json records: its config fields and
    the sizes of the data it trains and is scored on (another validation split changes them, and with them
    the steps of every epoch); "" when nothing did."""
    sizes = ("train_size", "test_size")
    # A field added to Config since that run started did not exist then: the run had its default.
    started = {**Config().to_dict(), **before["config"]}
    return config_changes({**started, **{k: before.get(k) for k in sizes}},
                          {**after["config"], **{k: after.get(k) for k in sizes}})


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One record per line; no file is no records."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(workdir) / "metrics.jsonl")


def write_metrics(workdir: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    write_jsonl(Path(workdir) / "metrics.jsonl", rows)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _save_figure(figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train beside test (and the EMA's test accuracy where recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in rows], label="train (smoothed targets, augmented)")
    loss_axis.plot(epochs, [r["test_loss"] for r in rows], label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_axis.plot(epochs, [r["train_acc"] for r in rows], label="train (augmented)")
    acc_axis.plot(epochs, [r["test_acc"] for r in rows], label="test")
    if rows and "ema_test_acc" in rows[0]:
        acc_axis.plot(epochs, [r["ema_test_acc"] for r in rows], label="test, EMA weights")
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    _save_figure(figure, Path(path))
    plt.close(figure)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> None:
    """Rows: true class; columns: predicted class; cells: counts, shaded by the row's fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(8, 7))
    image = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    for i in ticks:
        for j in ticks:
            axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if fractions[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    _save_figure(figure, Path(path))
    plt.close(figure)
