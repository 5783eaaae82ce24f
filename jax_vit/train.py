"""The training loop: data on the devices once, the production step every batch, a checkpoint every epoch.

`train_and_evaluate(config, dataset, workdir)` is the whole run; `scripts/train.py` only parses options.
Per epoch: a fixed-seed permutation of the training set (so a resumed run sees the same order), the
jit-compiled data-parallel step from `jax_vit.train_step`, a full test-set evaluation (raw and, if on, EMA
weights), a line in `metrics.jsonl`, then a checkpoint (every step's loss and the epoch's test loss are
checked finite first: a diverged run never overwrites a good one). A resumed run drops lines newer than its checkpoint.

On several processes (`jax_vit.distributed`) the same loop runs in every process over one mesh of all their
devices: every process draws the same epoch order and builds only its devices' part of each global batch, so
the batches, steps and metrics are those of one process with the same device count. Process 0 alone writes
run.json, metrics.jsonl, summary.json and curves.png and shows progress; all of them write the checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jax_vit import checkpoints, distributed, reporting
from jax_vit.allocator import active_allocator
from jax_vit.configs import Config, ConfigError
from jax_vit.data import Dataset
from jax_vit.platforms import PlatformError, check_requested_platform, cpu_fallback_note
from jax_vit.precision import MIN_LOSS_SCALE
from jax_vit.train_step import (DATA_AXIS, make_eval_step, make_mesh, make_recipe, make_train_step,
                                create_train_state, replicate_on_mesh, shard_batch, total_steps)

PROGRESS_EVERY = 10  # steps between progress-bar refreshes (each one waits for the device)


class TrainingError(RuntimeError):
    """A run that cannot start or go on: the message names the fix."""


class LossDiverged(TrainingError):
    """`what` says where it diverged and which checkpoint is kept; the message adds train.py's fix (the ablation
    runner gives its own). Not --resume: a run resumes only with its own settings, which repeat the same steps."""

    def __init__(self, what: str):
        super().__init__(f"{what}; lower --set learning_rate or grad_clip_norm and train again in a new --workdir")
        self.what = what


def configure_for_dataset(config: Config, dataset: Dataset) -> Config:
    size = dataset.train_images.shape[1]
    if config.image_size != size:  # the position embeddings would not fit the patches of the first batch
        raise ConfigError(f"image_size={config.image_size} does not match the {dataset.name} images "
                          f"({size}x{size}): drop --set image_size or set it to {size}")
    return config.replace(dataset=dataset.name, in_channels=dataset.channels, num_classes=len(dataset.class_names))


# --- the workdir -----------------------------------------------------------------------------------------

def prepare_workdir(workdir: Path, run_record: dict[str, Any], *, resume: bool, overwrite: bool,
                    compare: tuple[str, ...] = ()) -> bool:
    """Makes `workdir` ready for this run; True when there is an earlier run of the same config to resume.
    `compare`: further keys of the record a resumed run must share (e.g. the pretrained checkpoint).

    With several processes every one checks the workdir before process 0 changes it, so all decide alike;
    the workdir must be on a filesystem they all see (checked)."""
    resuming = _check_workdir(workdir, run_record, resume=resume, overwrite=overwrite, compare=compare)
    distributed.sync("workdir checked")
    if distributed.is_primary():
        if overwrite:
            for name in reporting.RUN_FILES:
                target = workdir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        if not resuming:
            workdir.mkdir(parents=True, exist_ok=True)
            reporting.write_json(workdir / "run.json", run_record)
    distributed.sync("workdir prepared")
    if not distributed.all_agree((workdir / "run.json").exists()):
        raise TrainingError(f"not every process sees {workdir / 'run.json'}, which process 0 wrote: put --workdir "
                            f"on a filesystem all hosts share (NFS, a bucket mounted with gcsfuse)")
    return resuming


def _check_workdir(workdir: Path, run_record: dict[str, Any], *, resume: bool, overwrite: bool,
                   compare: tuple[str, ...]) -> bool:
    """prepare_workdir's decision, changing nothing: True to resume; TrainingError when the run may not start."""
    previous = workdir / "run.json"
    holds_run = any((workdir / name).exists() for name in reporting.RUN_FILES) and not overwrite
    if holds_run and not resume:
        raise TrainingError(f"workdir {workdir} holds another run; add --resume to continue it, --overwrite to "
                            f"replace it, or choose a new --workdir")
    if holds_run:
        if not previous.exists():
            raise TrainingError(f"workdir {workdir} holds run files but no run.json; use --overwrite or a new --workdir")
        before = reporting.read_json(previous)
        details = reporting.resume_changes(before, run_record) or reporting.config_changes(
            {k: before.get(k) for k in compare}, {k: run_record.get(k) for k in compare})
        if details:
            raise TrainingError(f"--resume with different settings ({details}); resume with the original options "
                                f"or start a new --workdir")
        # Runs from before this record existed were all one process.
        started, now = before.get("process_count", 1), run_record["process_count"]
        if started != now:
            how = "one process (no --distributed)" if started == 1 else f"{started} processes (JAX_NUM_PROCESSES={started})"
            raise TrainingError(f"--resume on {now} process(es), but the run in {workdir} was started on {started}: "
                                f"resume it on {how}, or start a new --workdir")
        return True
    return False


# --- data on the devices ---------------------------------------------------------------------------------

def epoch_order(seed: int, epoch: int, num_examples: int, steps: int, batch_size: int) -> np.ndarray:
    """(steps, batch) example indices for `epoch`: a function of seed and epoch only, so resuming repeats it.
    The remainder that does not fill a batch is dropped (different examples each epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


@functools.lru_cache(maxsize=4)
def make_gather(mesh):
    """Each device cuts its shard of the batch out of its own copy of the training set (no transfers)."""
    gather = jax.shard_map(
        lambda images, labels, index: (images[index], labels[index]),
        mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
    )
    return jax.jit(gather)


def padded_eval_batches(mesh, images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The test set as device-resident batches; the last is padded and masked so every image counts once."""
    num = len(images)
    total = math.ceil(num / batch_size) * batch_size
    pad = total - num
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    mask = np.concatenate([np.ones(num, np.float32), np.zeros(pad, np.float32)])
    return [shard_batch(mesh, images[i:i + batch_size], labels[i:i + batch_size], mask[i:i + batch_size])
            for i in range(0, total, batch_size)]


def evaluate(eval_step, params, batches, num_examples: int) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predictions) over the padded batches from `padded_eval_batches`."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    predictions = []
    for images, labels, mask in batches:
        sums, predicted = eval_step(params, images, labels, mask)  # sums: added over every process's devices
        for key, value in jax.device_get(sums).items():
            totals[key] += float(value)
        predictions.append(distributed.to_host(predicted))
    count = max(totals["count"], 1.0)
    return totals["loss_sum"] / count, totals["correct"] / count, np.concatenate(predictions)[:num_examples]


# --- the run ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class EpochTracker:
    """Per-step metrics stay on the device; reading them back only at refreshes keeps the device queue full."""

    pending: list = dataclasses.field(default_factory=list)
    read: list = dataclasses.field(default_factory=list)

    def add(self, metrics) -> None:
        self.pending.append(metrics)

    def flush(self, keep_newest: bool = False) -> list[dict[str, float]]:
        """Reads the pending metrics back. `keep_newest` leaves the newest step's metrics pending: waiting for
        it would drain the device queue, while the older ones are already computed."""
        ready, self.pending = (self.pending[:-1], self.pending[-1:]) if keep_newest else (self.pending, [])
        self.read += [{k: float(v) for k, v in m.items()} for m in jax.device_get(ready)]
        return self.read


def _diverged(manager, what: str, epoch: int) -> LossDiverged:
    kept = manager.latest_step()
    where = f"step {kept}" if kept is not None else "none: it diverged in the first epoch"
    return LossDiverged(f"{what} (epoch {epoch}); last good checkpoint kept ({where})")


def _first_divergence(rows: list[dict[str, float]]) -> tuple[int, str] | None:
    """(index, what happened) of the first step that diverged, else None. A float16 step whose gradients
    overflowed was skipped and its loss scale halved: that is the loss scaling at work, not a divergence,
    unless the scale was already at its floor (the gradients overflow float16 unscaled)."""
    for index, row in enumerate(rows):
        if not math.isfinite(row["loss"]):
            return index, "loss became NaN/inf"
        if row.get("skipped"):
            if row["loss_scale"] <= MIN_LOSS_SCALE:
                return index, f"float16 gradients overflowed with the loss scale at {MIN_LOSS_SCALE:g}"
        elif not math.isfinite(row["grad_norm"]):
            return index, "loss became NaN/inf"
    return None


@distributed.peer_failures()  # a peer that died: one clear error, not the runtime's
def train_and_evaluate(
    config: Config,
    dataset: Dataset,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | None = None,
    devices=None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    eval_name: str = "test",
    init_params=None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains `config` on `dataset`, writing checkpoints, metrics, summary and curves into `workdir`.

    `on_epoch_end(epoch, row)` runs after each epoch's checkpoint and metrics line are written.
    `eval_name` is what the epoch line calls the split scored every epoch (the ablation runner passes its
    validation images as the dataset's test split); metrics.jsonl keeps the `test_` keys either way.
    `init_params`: the weights a new run starts from (a pretrained model's, in the model's pure-dict layout)
    instead of a random initialisation; a resumed run continues from its checkpoint. `run_info`: what else
    defines the run (the pretrained checkpoint, the evaluation split), written into run.json and required to
    be the same by `resume`.
    Returns the summary (also written to `workdir/summary.json`).

    After `jax_vit.distributed.initialize` every process calls this alike; the default mesh then spans all
    their devices. The returned summary is the same in every process.
    """
    started = time.time()
    try:  # first: anything below starts JAX's backends, and a missing one would fail in a paragraph
        check_requested_platform()
    except PlatformError as error:
        raise TrainingError(str(error)) from None
    primary = distributed.is_primary()
    log = tqdm.write if primary else (lambda message: None)
    workdir = Path(workdir).resolve()
    config = configure_for_dataset(config, dataset)
    mesh = make_mesh(devices)
    num_devices = mesh.devices.size
    if config.batch_size % num_devices:
        raise TrainingError(f"--batch-size {config.batch_size} does not split evenly over {num_devices} devices; "
                            f"use a multiple of {num_devices}")
    steps_per_epoch = len(dataset.train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"--batch-size {config.batch_size} is larger than the training set "
                            f"({len(dataset.train_images)} images); lower it")
    if config.total_steps:  # a run defined in steps: the epochs follow, the last one cut short
        config = config.replace(epochs=math.ceil(config.total_steps / steps_per_epoch))
    run_steps = total_steps(config, steps_per_epoch)
    recipe = make_recipe(config, steps_per_epoch)
    run_record = {"config": config.to_dict(), "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
                  "data_source": dataset.source, "class_names": list(dataset.class_names),
                  "train_size": len(dataset.train_images), "test_size": len(dataset.test_images),
                  "process_count": jax.process_count(), "precision": recipe.precision.to_dict(),
                  **(run_info or {})}
    resuming = prepare_workdir(workdir, run_record, resume=resume, overwrite=overwrite, compare=tuple(run_info or ()))
    for line in (recipe.precision.describe(), cpu_fallback_note(mesh.devices.flat[0].platform)):
        if line:
            log(line)
    manager = checkpoints.make_manager(workdir)
    state = checkpoints.restore(manager, recipe, mesh, "latest") if resuming else None
    rows = []
    if state is None:
        state = create_train_state(recipe, mesh, params=init_params)
        if primary:
            reporting.write_metrics(workdir, [])
    else:
        # Epoch lines written after the restored checkpoint belong to the interrupted future: drop them.
        done = -(-int(jax.device_get(state.step)) // steps_per_epoch)  # a short last epoch counts as done
        rows = [row for row in reporting.read_metrics(workdir) if row["epoch"] <= done]
        distributed.sync("metrics read")  # every process has its rows before process 0 rewrites the file
        if primary:
            reporting.write_metrics(workdir, rows)
    start_epoch = -(-int(jax.device_get(state.step)) // steps_per_epoch)
    if start_epoch:
        log(f"resuming after epoch {start_epoch} of {config.epochs} from {checkpoints.checkpoint_dir(workdir)}")

    train_images = replicate_on_mesh(mesh, dataset.train_images)
    train_labels = replicate_on_mesh(mesh, dataset.train_labels)
    test_batches = padded_eval_batches(mesh, dataset.test_images, dataset.test_labels, config.batch_size)
    gather = make_gather(mesh)
    train_step = make_train_step(recipe, mesh)
    eval_step = make_eval_step(recipe, mesh)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        order = epoch_order(config.seed, epoch, len(dataset.train_images), steps_per_epoch, config.batch_size)
        order = order[: run_steps - (epoch - 1) * steps_per_epoch]  # cut only a step-defined run's last epoch
        tracker = EpochTracker()
        epoch_start = time.time()
        bar = tqdm(total=len(order), desc=f"epoch {epoch}/{config.epochs}", disable=not (progress and primary),
                   leave=False, dynamic_ncols=True)
        for done, index in enumerate(order, start=1):
            images, labels = gather(train_images, train_labels, shard_batch(mesh, index))
            state, metrics = train_step(state, images, labels)
            tracker.add(metrics)
            bar.update(1)
            if done % PROGRESS_EVERY == 0:
                seen = tracker.flush(keep_newest=True)
                if _first_divergence(seen) is not None:
                    break
                recent = seen[-PROGRESS_EVERY:]
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in recent]):.3f}",
                                acc=f"{np.mean([r['accuracy'] for r in recent]):.3f}",
                                img_s=f"{len(seen) * config.batch_size / (time.time() - epoch_start):.0f}")
        bar.close()
        seen = tracker.flush()
        bad = _first_divergence(seen)
        if bad is not None:
            raise _diverged(manager, f"{bad[1]} at step {(epoch - 1) * steps_per_epoch + bad[0] + 1}", epoch)
        jax.block_until_ready(state)
        epoch_seconds = time.time() - epoch_start

        test_loss, test_acc, _ = evaluate(eval_step, state.params, test_batches, len(dataset.test_labels))
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean([r["loss"] for r in seen])),
            "train_acc": float(np.mean([r["accuracy"] for r in seen])),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": seen[-1]["lr"],
            "epoch_seconds": epoch_seconds,
            "images_per_second": len(order) * config.batch_size / epoch_seconds,
            # This process compiled the step during it: its speed is not the run's (a resumed run compiles again).
            "includes_compilation": epoch == start_epoch + 1,
        }
        if "loss_scale" in seen[-1]:  # float16: the scale the epoch's last step used, and the overflows skipped
            row["loss_scale"] = seen[-1]["loss_scale"]
            row["skipped_steps"] = int(sum(r["skipped"] for r in seen))
        if state.ema_params is not None:
            row["ema_test_loss"], row["ema_test_acc"], _ = evaluate(
                eval_step, state.ema_params, test_batches, len(dataset.test_labels))
        # The epoch's last update is not covered by any step's loss: weights it broke show here, before they
        # could be checkpointed as good.
        if not all(math.isfinite(row[k]) for k in ("test_loss", "ema_test_loss") if k in row):
            raise _diverged(manager, f"the weights after step {epoch * steps_per_epoch} give a NaN/inf {eval_name} "
                                     f"loss", epoch)
        # The epoch's line goes first: a kill between the two then leaves a line without its checkpoint,
        # which resuming drops, and never a checkpoint whose line would be missing from metrics.jsonl.
        rows.append(row)
        if primary:
            reporting.write_metrics(workdir, rows)
        best_of_epoch = max(row["test_acc"], row.get("ema_test_acc", 0.0))
        checkpoints.save(manager, state, {checkpoints.BEST_METRIC: best_of_epoch})
        message = (f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                   f"{eval_name} loss {test_loss:.4f} acc {test_acc:.4f}")
        if "ema_test_acc" in row:
            message += f" (EMA {row['ema_test_acc']:.4f})"
        if "loss_scale" in row:
            message += f" | loss scale {row['loss_scale']:g}, {row['skipped_steps']} step(s) skipped"
        message += f" | {epoch_seconds:.1f} s, {row['images_per_second']:.0f} img/s"
        log(message)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    manager.close()
    summary = write_summary(workdir, config, rows, dataset, mesh, wall_seconds=time.time() - started,
                            precision=recipe.precision.to_dict())
    if rows and primary:
        reporting.plot_curves(rows, workdir / "curves.png",
                              f"ViT on {dataset.name}: width {config.width}, depth {config.depth}, "
                              f"batch {config.batch_size}")
    return summary


def _mean_speed(rows) -> float | None:
    """Mean images/s over the epochs that compiled nothing (all of them if every one did)."""
    # Rows written before the flag existed: only epoch 1 is known to have compiled.
    compiled = [r.get("includes_compilation", r["epoch"] == 1) for r in rows]
    steady = [r["images_per_second"] for r, c in zip(rows, compiled) if not c] or [r["images_per_second"] for r in rows]
    return float(np.mean(steady)) if steady else None


def write_summary(workdir: Path, config: Config, rows, dataset: Dataset, mesh, wall_seconds: float,
                  precision: dict | None = None) -> dict:
    device = mesh.devices.flat[0]

    def best(key):
        return max((r[key] for r in rows if key in r), default=None)

    summary = {
        "best_test_acc": best("test_acc"),
        "final_test_acc": rows[-1]["test_acc"] if rows else None,
        "epochs": len(rows),
        "wall_seconds": wall_seconds,  # this invocation (a resumed run counts from its restart)
        "train_seconds_all_epochs": float(sum(r["epoch_seconds"] for r in rows)),
        "mean_images_per_second": _mean_speed(rows),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": int(mesh.devices.size),
        "process_count": jax.process_count(),
        "precision": precision,  # compute dtype, loss scaling and why (jax_vit/precision.py)
        "dataset": dataset.name,
        "train_size": len(dataset.train_images),
        "test_size": len(dataset.test_images),
        "versions": reporting.versions(),
        "host_allocator": active_allocator(),
        "config": config.to_dict(),
    }
    if rows and "skipped_steps" in rows[-1]:
        summary["skipped_steps"] = sum(r.get("skipped_steps", 0) for r in rows)  # float16 overflows, all epochs
    if rows and "ema_test_acc" in rows[-1]:
        summary["best_ema_test_acc"] = best("ema_test_acc")
        summary["final_ema_test_acc"] = rows[-1]["ema_test_acc"]
    if distributed.is_primary():
        reporting.write_json(workdir / "summary.json", summary)
    return summary
