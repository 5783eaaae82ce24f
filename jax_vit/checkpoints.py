"""Orbax checkpoints of the whole train state: the latest (to resume) and the best by test accuracy.

One `CheckpointManager` under `WORKDIR/checkpoints`, keeping the union of the latest step and the best
step, so a run never holds more than two checkpoints. Each checkpoint is the full `TrainState` (step,
params, optimiser state, EMA, RNG), so resuming continues exactly where the run stopped.
"""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint import checkpoint_managers

from jax_vit.train_step import Recipe, TrainState, init_train_state

BEST_METRIC = "test_acc"


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
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, metrics: dict) -> None:
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), metrics=metrics)
    manager.wait_until_finished()


def abstract_state(recipe: Recipe, mesh: jax.sharding.Mesh) -> TrainState:
    """Shapes, dtypes and replicated shardings on `mesh` of a train state, for restoring into."""
    shapes = jax.eval_shape(lambda: init_train_state(recipe))
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore(manager: ocp.CheckpointManager, recipe: Recipe, mesh, which: str = "latest") -> TrainState | None:
    """The `which` ("latest" or "best") checkpoint, replicated on `mesh`; None when there is none."""
    step = manager.latest_step() if which == "latest" else manager.best_step()
    if step is None:
        return None
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state(recipe, mesh)))
