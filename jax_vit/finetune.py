"""Fine-tune a pretrained ViT with the trainer that trains one from scratch.

`finetune(source, dataset, workdir)` reads the checkpoint (`jax_vit.pretrained`), builds the config from a
fine-tuning preset with the checkpoint's architecture, and calls `jax_vit.train.train_and_evaluate` with the
checkpoint's weights as the starting point: the same per-device step, mesh, Orbax checkpoints, resume, progress
bar, metrics.jsonl, summary.json, curves and `evaluate.py`. The images stay uint8 at the dataset's 32x32 on the
device; the step crops and flips them there and resizes them to `resolution` (Config.resolution), inside jit.

With `val_fraction`, a class-balanced share of the training images (the ablation runner's split) is held out
and scored every epoch in place of the test set (for choosing the learning rate, as the ViT authors did on 2%);
the test set is then scored once, on the final weights (eval.json).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jax_vit.configs import FINETUNE_PRESETS, Config, ConfigError, get_config
from jax_vit.data import Dataset
from jax_vit.pretrained import ARCHITECTURE_FIELDS, Pretrained, PretrainedError, init_params, load_pretrained

DEFAULT_PRESET = "finetune-sgd"
WARMUP_SHARE = 0.1  # --steps N warms up over N // 10 steps: the ViT authors' 500/50 and 1000/100 schedules


def finetune_config(pretrained: Pretrained, dataset: Dataset, *, preset: str = DEFAULT_PRESET,
                    overrides: dict[str, Any] | None = None, resolution: int | None = None,
                    steps: int | None = None) -> Config:
    """The preset's recipe with the checkpoint's architecture and input normalisation, at `resolution` (default:
    the checkpoint's own), for `dataset`'s images, with `overrides` (--set) on top."""
    if preset not in FINETUNE_PRESETS:
        raise ConfigError(f"unknown fine-tuning preset {preset!r}; choose one of: {', '.join(FINETUNE_PRESETS)}")
    overrides = dict(overrides or {})
    fixed = [name for name in ARCHITECTURE_FIELDS if name in overrides and name != "num_heads"]
    if fixed:
        raise ConfigError(f"--set {fixed[0]}: the checkpoint fixes it ({fixed[0]}="
                          f"{pretrained.architecture[fixed[0]]!r}); drop that --set")
    if "num_heads" in overrides and int(overrides["num_heads"]) != pretrained.architecture["num_heads"]:
        raise ConfigError(f"--set num_heads: the checkpoint has {pretrained.architecture['num_heads']} heads; drop "
                          f"that --set")
    changes: dict[str, Any] = {**pretrained.architecture, "image_size": dataset.train_images.shape[1],
                               "resolution": resolution or pretrained.resolution,
                               "input_norm": pretrained.input_norm or "dataset"}
    if steps is not None:
        changes["total_steps"] = steps
        changes["warmup_steps"] = int(steps * WARMUP_SHARE)
    return get_config(preset, {**changes, **overrides}, presets=FINETUNE_PRESETS)


def _validation_split(dataset: Dataset, fraction: float) -> Dataset:
    from jax_vit.ablation.runner import validation_split

    train, val = validation_split(dataset.train_labels, fraction)
    return dataclasses.replace(
        dataset, train_images=dataset.train_images[train], train_labels=dataset.train_labels[train],
        test_images=dataset.train_images[val], test_labels=dataset.train_labels[val],
        source=f"{dataset.source} (validation split: {fraction:g} of the training images)")


def describe(pretrained: Pretrained, config: Config) -> list[str]:
    """What was done to the checkpoint, one line each: printed and kept in run.json."""
    grid, new_grid = pretrained.grid, config.input_size // config.patch_size
    lines = list(pretrained.notes)
    lines.append(f"position embeddings: {grid}x{grid} grid kept" if grid == new_grid else
                 f"position embeddings: {grid}x{grid} grid resized to {new_grid}x{new_grid} (bilinear, CLS kept)")
    if pretrained.in_channels != config.in_channels:
        lines.append(f"patch embedding adapted from {pretrained.in_channels} to {config.in_channels} input channels")
    return lines


def finetune(source: str, dataset: Dataset, workdir: str | Path, *, preset: str = DEFAULT_PRESET,
             overrides: dict[str, Any] | None = None, resolution: int | None = None, steps: int | None = None,
             val_fraction: float = 0.0, resume: bool = False, overwrite: bool = False, download: bool = False,
             data_dir: str | None = None, devices=None, progress: bool = True) -> dict[str, Any]:
    """Fine-tunes the checkpoint `source` (a path or a Hub repo id) on `dataset` in `workdir`; returns the
    summary, with the final weights' test evaluation under "test_eval" when a validation split was held out."""
    from tqdm.auto import tqdm

    from jax_vit.distributed import is_primary
    from jax_vit.train import configure_for_dataset, train_and_evaluate
    from jax_vit.train_step import check_params

    overrides = dict(overrides or {})
    hint = overrides.get("num_heads")
    pretrained = load_pretrained(source, download=download, num_heads=int(hint) if hint is not None else None)
    if val_fraction:
        dataset = _validation_split(dataset, val_fraction)
    config = configure_for_dataset(finetune_config(pretrained, dataset, preset=preset, overrides=overrides,
                                                   resolution=resolution, steps=steps), dataset)
    try:
        params = check_params(config, init_params(pretrained, config))
    except ValueError as error:
        raise PretrainedError(f"{source}: its tensors do not fit the architecture it describes ({error})") from None
    notes = describe(pretrained, config)
    for line in notes if is_primary() else ():
        tqdm.write(f"pretrained {pretrained.format} {source}: {line}")
    run_info = {"pretrained": {**pretrained.record(), "notes": notes},
                "eval_split": f"validation ({val_fraction:g} of the training images)" if val_fraction else "test"}
    summary = train_and_evaluate(config, dataset, workdir, resume=resume, overwrite=overwrite, data_dir=data_dir,
                                 devices=devices, progress=progress, init_params=params, run_info=run_info,
                                 eval_name="val" if val_fraction else "test")
    if val_fraction and data_dir is not None:
        from jax_vit.evaluate import evaluate_run

        summary["test_eval"] = evaluate_run(workdir, data_dir, checkpoint="latest", devices=devices)
    return summary

