"""The ablation runner: every setting of a grid gets the same epoch budget, seeds and validation split.

Settings are chosen on a validation split carved from the training images, the same split for every run;
the test images are only scored at the end, for the report.

Each finished run is appended to `runs.jsonl` in the output folder (so an interrupted grid resumes where it
stopped), and after every run `report` rewrites `results.csv`, `results.md` and `accuracy.png` from it.
The run in training keeps its checkpoints in `OUT/in-progress/`, so an interrupted run continues from its
last finished epoch instead of starting again (on a CPU one run can take hours); the folder goes once the run
is recorded.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jax_vit.ablation.grids import GRIDS, AblationError, Setting, setting_config
from jax_vit.ablation.report import append_run, load_runs, write_reports
from jax_vit.configs import Config
from jax_vit.reporting import resume_changes


def validation_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): `fraction` of each class held out, fixed by `seed`.

    The split seed is not the run seed: every run of every grid is scored on the same images.
    """
    if not 0.0 < fraction < 1.0:
        raise AblationError(f"--val-fraction {fraction} must be between 0 and 1, for example 0.1")
    rng = np.random.default_rng(seed)
    held_out = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        held_out.append(members[: max(1, int(round(fraction * members.size)))])
    val = np.sort(np.concatenate(held_out))
    train = np.setdiff1d(np.arange(labels.size), val)
    return train, val


def select_settings(grid: str, grid_settings: list[Setting], names: list[str] | None) -> list[Setting]:
    """The grid's settings named in `names`, in the grid's order; all of them when `names` is None."""
    if names is None:
        return grid_settings
    known = [setting.name for setting in grid_settings]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise AblationError(f"--settings {unknown or names}: grid {grid!r} has the settings "
                            + ", ".join(repr(name) for name in known))
    return [setting for setting in grid_settings if setting.name in names]


# train_fn(config, train, val, test, workdir) -> {"params": int, "train_seconds": float, "history": [{"epoch",
# "val_accuracy", "val_accuracy_ema"}...], "test_accuracy": float, "test_accuracy_ema": float | None};
# train/val/test are (uint8 images, int labels) pairs; workdir holds the run's checkpoints and `run.json`
# (its config) while it trains, and resumes an interrupted run of the same config.
TrainFn = Callable[[Config, tuple, tuple, tuple, Path], dict]
_RESULT_KEYS = ("params", "train_seconds", "history", "val_accuracy", "val_accuracy_ema", "test_accuracy",
                "test_accuracy_ema")


IN_PROGRESS = "in-progress"


def in_progress_dir(out_dir: Path, grid: str, setting: str, seed: int) -> Path:
    """Where the run (grid, setting, seed) keeps its checkpoints until it is recorded in runs.jsonl."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{grid} {setting} seed {seed}").strip("-")
    return Path(out_dir) / IN_PROGRESS / slug


def interrupted_config(workdir: Path) -> dict | None:
    """The config of the interrupted run in `workdir` (from the trainer's run.json), None if there is none."""
    record = workdir / "run.json"
    return json.loads(record.read_text())["config"] if record.exists() else None


def _check_resumable(workdir: Path, config: Config, train: tuple, val: tuple, run_name: str) -> None:
    record = workdir / "run.json"
    if not record.exists():
        return
    # As the trainer's run.json records it: the validation split is what the run is scored on.
    now = {"config": json.loads(json.dumps(config.to_dict())), "train_size": len(train[1]), "test_size": len(val[1])}
    details = resume_changes(json.loads(record.read_text()), now)
    if not details:
        return
    raise AblationError(f"{workdir} holds an interrupted run of {run_name} with other settings ({details}); rerun "
                        f"with the original options to finish it, or delete that folder to train it afresh")


def _finish(workdir: Path) -> None:
    """The run is recorded: its checkpoints go, and the in-progress folder with its last run."""
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # only when empty


def run_grid(grid: str, base: Config, dataset, out_dir: Path, *, epochs: int | None = None,
             budget_minutes: float | None = None, seeds: list[int], val_fraction: float = 0.1,
             settings: list[str] | None = None, train_fn: TrainFn | None = None,
             epoch_seconds_fn: Callable | None = None, header: str = "") -> list[dict]:
    """Train every (setting, seed) of `grid` not already in `out_dir`; returns all runs recorded there.

    `settings` keeps only the named settings of the grid (all when None): a costly setting already measured
    at this budget need not be trained again for more seeds.

    The budget is either `epochs` (the same for every setting: fair on a shared, noisy machine) or
    `budget_minutes` of training per run, turned into each setting's epoch count from its measured speed
    (so a setting that is twice as slow gets half the epochs; the schedule still completes). A run
    interrupted part-way continues from its last checkpoint, with the epochs it started with.
    """
    if grid not in GRIDS:
        raise AblationError(f"unknown grid {grid!r}; choose one of: {', '.join(GRIDS)}")
    if (epochs is None) == (budget_minutes is None):
        raise AblationError("give exactly one budget: --epochs N or --budget-minutes M")
    if epochs is not None and epochs < 1:
        raise AblationError(f"--epochs {epochs} must be at least 1")
    if budget_minutes is not None and budget_minutes <= 0:
        raise AblationError(f"--budget-minutes {budget_minutes} must be positive")
    if not seeds:
        raise AblationError("--seeds needs at least one seed, for example --seeds 0 1")
    chosen = select_settings(grid, GRIDS[grid](base), settings)
    if train_fn is None:
        from jax_vit.ablation.train_run import train_and_score as train_fn
    if epoch_seconds_fn is None and budget_minutes is not None:
        from jax_vit.ablation.train_run import seconds_per_epoch as epoch_seconds_fn
    out_dir = Path(out_dir)
    train_idx, val_idx = validation_split(dataset.train_labels, val_fraction)
    train = (dataset.train_images[train_idx], dataset.train_labels[train_idx])
    val = (dataset.train_images[val_idx], dataset.train_labels[val_idx])
    test = (dataset.test_images, dataset.test_labels)
    previous = load_runs(out_dir)
    done = {(r["grid"], r["setting"], r["seed"]) for r in previous}
    # The same config in another grid (crop+flip = DropPath 0 = patch 4 on the base) is trained once.
    by_config = {json.dumps(r["config"], sort_keys=True): r for r in previous if "config" in r}
    for setting in chosen:
        if all((grid, setting.name, seed) in done for seed in seeds):
            continue
        run_epochs = epochs
        # An interrupted run keeps the epochs its budget was converted to; measuring again would change them.
        started = [c for c in (interrupted_config(in_progress_dir(out_dir, grid, setting.name, s)) for s in seeds)
                   if c is not None]
        if budget_minutes is not None and started:
            run_epochs = started[0]["epochs"]
        elif budget_minutes is not None:
            per_epoch = epoch_seconds_fn(setting_config(base, setting, 1, seeds[0]), train)
            run_epochs = max(1, int(budget_minutes * 60 // per_epoch))
        for seed in seeds:
            if (grid, setting.name, seed) in done:
                continue
            config = setting_config(base, setting, run_epochs, seed)
            workdir = in_progress_dir(out_dir, grid, setting.name, seed)
            config_key = json.dumps(config.to_dict(), sort_keys=True)
            if config_key in by_config:
                source = by_config[config_key]
                print(f"[{grid}] {setting.name} seed {seed}: same config as "
                      f"[{source['grid']}] {source['setting']}, reusing it", flush=True)
                result = {k: v for k, v in source.items() if k in _RESULT_KEYS}
                # The numbers belong to the command that trained them, not to the one that reuses them.
                result["header"] = source.get("header", "")
                result["reused_from"] = source.get("reused_from") or f"[{source['grid']}] {source['setting']}"
            else:
                _check_resumable(workdir, config, train, val, f"[{grid}] {setting.name} seed {seed}")
                print(f"[{grid}] {setting.name} seed {seed}: training {run_epochs} epochs", flush=True)
                result = {**train_fn(config, train, val, test, workdir), "header": header}
            changes = {k: v for k, v in config.to_dict().items() if getattr(base, k, None) != v}
            run = {"grid": grid, "setting": setting.name, "seed": seed, "epochs": run_epochs, "changes": changes,
                   "budget": f"{budget_minutes:g} min" if budget_minutes is not None else f"{epochs} epochs",
                   "dataset": dataset.name, "val_images": int(val_idx.size), "train_images": int(train_idx.size),
                   "config": config.to_dict(), **result}
            append_run(out_dir, run)
            _finish(workdir)
            by_config[config_key] = run
            write_reports(out_dir, load_runs(out_dir), header)
    runs = load_runs(out_dir)
    write_reports(out_dir, runs, header)
    return runs
