"""A checkpoint our own trainer wrote: a `scripts/train.py` (or `scripts/finetune.py`) workdir.

The run's config (run.json) is the architecture; its best checkpoint (Orbax) the weights, with the EMA's
where the run kept one and they scored better at that epoch. Already our layout: only the head goes.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jax_vit.pretrained.base import ARCHITECTURE_FIELDS, Pretrained, PretrainedError


def is_run(folder: Path) -> bool:
    return (folder / "run.json").is_file() and (folder / "checkpoints").is_dir()


def load(folder: Path, source: str) -> Pretrained:
    from jax_vit import checkpoints, reporting
    from jax_vit.evaluate import load_run_config
    from jax_vit.train_step import make_mesh, make_recipe

    config, record = load_run_config(folder)
    steps_per_epoch = max(record.get("train_size", 0) // config.batch_size, 1)
    recipe = make_recipe(config, steps_per_epoch)
    manager = checkpoints.make_manager(folder, read_only=True)
    try:
        state = checkpoints.restore(manager, recipe, make_mesh(jax.local_devices()[:1]), "best")
        step = manager.best_step()
    except (ValueError, OSError, KeyError) as error:
        raise PretrainedError(f"{source}: its checkpoint could not be read ({type(error).__name__}: "
                              f"{str(error)[:200]}); point --pretrained at a complete workdir") from None
    finally:
        manager.close()
    if state is None:
        raise PretrainedError(f"{source} holds no checkpoint yet; train it for at least one epoch first")
    epoch = -(-int(step) // steps_per_epoch)
    row = next((r for r in reporting.read_metrics(folder) if r["epoch"] == epoch), {})
    use_ema = state.ema_params is not None and row.get("ema_test_acc", -1.0) > row.get("test_acc", 0.0)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(
        state.ema_params if use_ema else state.params))
    params.pop("head")
    notes = [f"best checkpoint (step {step}, epoch {epoch}, {'EMA' if use_ema else 'raw'} weights, "
             f"{config.dataset} test accuracy {row.get('ema_test_acc' if use_ema else 'test_acc', float('nan')):.4f})",
             f"head ({config.num_classes} classes) replaced by a zero-initialised one"]
    return Pretrained(
        source=source, format="jax_vit run", path=str(folder),
        architecture={name: getattr(config, name) for name in ARCHITECTURE_FIELDS},
        resolution=config.input_size, in_channels=config.in_channels,
        # "dataset": each dataset standardised by its own statistics, as the run was.
        input_norm=config.input_norm, params=params, notes=tuple(notes),
    )
