"""Orbax checkpoints of the whole train state: the latest (to resume) and the best by test accuracy.

One `CheckpointManager` under `WORKDIR/checkpoints`, keeping the union of the latest step and the best
step, so a run never holds more than two checkpoints. Each checkpoint is the full `TrainState` (step,
params, optimiser state, EMA, RNG, and in float16 the loss scale), so resuming continues exactly where the
run stopped.
"""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint import checkpoint_managers

from jax_vit.precision import DynamicLossScale
from jax_vit.train_step import Recipe, TrainState, init_train_state, replicate_on_mesh

BEST_METRIC = "test_acc"
LOSS_SCALE = "loss_scale"  # the TrainState field only float16 runs fill


def _best_metric(metrics: dict) -> float:
    return float(metrics[BEST_METRIC])


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "checkpoints"


def make_manager(workdir: str | Path, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_metric,
        best_mode="max",
        preservation_policy=checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=1),
            checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
        ]),
        # Synchronous: the next train step donates the state's buffers, so the save must have read them.
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
    )
    # The handler named up front, so a new process can read a checkpoint's tree layout before restoring it.
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, state: TrainState, metrics: dict) -> None:
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), metrics=metrics)
    manager.wait_until_finished()


def abstract_state(recipe: Recipe, mesh: jax.sharding.Mesh) -> TrainState:
    """Shapes, dtypes and replicated shardings on `mesh` of a train state, for restoring into."""
    return _replicated_shapes(mesh, jax.eval_shape(lambda: init_train_state(recipe)))


def _replicated_shapes(mesh, shapes):
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore(manager: ocp.CheckpointManager, recipe: Recipe, mesh, which: str = "latest") -> TrainState | None:
    """The `which` ("latest" or "best") checkpoint, replicated on `mesh`; None when there is none.

    The float16 loss scale is restored as saved where this run computes in float16 too. Checkpoints written
    before the field existed have no `loss_scale` entry at all, and a run resumed with `compute_dtype=auto` on
    another GPU generation may switch between float16 and bfloat16: the state is read in the layout it was
    saved in, then the scale is dropped, or started afresh (which costs at most a few skipped steps)."""
    step = manager.latest_step() if which == "latest" else manager.best_step()
    if step is None:
        return None
    target = abstract_state(recipe, mesh)
    saved = manager.metadata(step).item_metadata.tree
    # The saved layout: the target's fields, with a loss scale exactly where the checkpoint has one.
    fields = {name: getattr(target, name) for name in saved}
    if LOSS_SCALE in saved:
        fields[LOSS_SCALE] = None if saved[LOSS_SCALE] is None else _replicated_shapes(
            mesh, jax.eval_shape(DynamicLossScale.create))
    restored = manager.restore(step, args=ocp.args.StandardRestore(fields))
    loss_scale = restored.pop(LOSS_SCALE, None)
    if not recipe.precision.loss_scaling:
        loss_scale = None
    elif loss_scale is None:
        loss_scale = replicate_on_mesh(mesh, DynamicLossScale.create())
    return TrainState(**restored, loss_scale=loss_scale)
