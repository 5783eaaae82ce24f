"""Ablation grids: each a list of settings, each setting a name and the config changes it makes to the base.

The recipe presets of the `best` grid replace the base's recipe but keep its model size, so `best` and the
write-ups' recipes are compared at the same size and budget.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from jax_vit.configs import PRESETS, Config

# What a recipe preset takes from the base in the `best` grid: the data and the model size (only the recipe
# is compared). The dataset matters beyond the model: it picks the normalisation statistics.
BASE_FIELDS = ("dataset", "image_size", "in_channels", "num_classes", "patch_size", "width", "depth", "num_heads",
               "mlp_dim", "compute_dtype")
# A short budget cannot afford the write-ups' 5 warm-up epochs: warm-up is capped at this share of it.
MAX_WARMUP_SHARE = 0.2
RANDAUGMENT = {"randaugment_ops": 2, "randaugment_magnitude": 9.0}
MIX = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0}
NO_RECIPE_AUGMENTATION = {"randaugment_ops": 0, "trivial_augment": False, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                          "random_erasing": 0.0}


class AblationError(ValueError):
    """A bad grid name, budget or seed list; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe_preset: str | None = None  # take the whole recipe from this preset, the model size from the base


def equal_param_shapes(base: Config, depths: tuple[int, ...]) -> list[tuple[int, int]]:
    """(depth, width) pairs with about the base's encoder parameter count.

    A block holds about (4 + 2 * mlp_ratio) * width^2 parameters, so depth * width^2 is held fixed; widths
    are rounded to a multiple of the head count (heads stay fixed, so head size grows with width).
    """
    shapes = []
    for depth in depths:
        width = base.width * math.sqrt(base.depth / depth)
        width = max(base.num_heads, int(round(width / base.num_heads)) * base.num_heads)
        shapes.append((depth, width))
    return shapes


def _patch_grid(base: Config) -> list[Setting]:
    return [Setting(f"patch {p}", {"patch_size": p}) for p in (2, 4, 8)]


def _shape_grid(base: Config) -> list[Setting]:
    ratio = base.mlp_dim / base.width
    depths = tuple(sorted({max(1, base.depth // 2), base.depth, base.depth * 2, base.depth * 4}))
    return [Setting(f"depth {d} x width {w}", {"depth": d, "width": w, "mlp_dim": int(round(ratio * w))})
            for d, w in equal_param_shapes(base, depths)]


def _augment_grid(base: Config) -> list[Setting]:
    # Each setting switches every recipe augmentation itself, so "crop+flip" means just that on any base
    # (on `best` as the base, it would otherwise keep best's Mixup/CutMix).
    return [
        Setting("crop+flip", dict(NO_RECIPE_AUGMENTATION)),
        Setting("+RandAugment", {**NO_RECIPE_AUGMENTATION, **RANDAUGMENT}),
        Setting("+Mixup/CutMix", {**NO_RECIPE_AUGMENTATION, **MIX}),
        Setting("+RandAugment +Mixup/CutMix", {**NO_RECIPE_AUGMENTATION, **RANDAUGMENT, **MIX}),
    ]


def _regularise_grid(base: Config) -> list[Setting]:
    return [
        Setting("DropPath 0", {"drop_path_rate": 0.0}),
        Setting("DropPath 0.1", {"drop_path_rate": 0.1}),
        Setting("DropPath 0.2", {"drop_path_rate": 0.2}),
        Setting("label smoothing 0", {"drop_path_rate": 0.0, "label_smoothing": 0.0}),
    ]


def _optimise_grid(base: Config) -> list[Setting]:
    # At a fixed epoch budget the batch size sets the number of updates; the learning rate their size.
    batches = (max(8, base.batch_size // 2), base.batch_size, base.batch_size * 2)
    return ([Setting(f"batch {b}", {"batch_size": b}) for b in batches]
            + [Setting(f"lr {lr:g}", {"learning_rate": lr}) for lr in (base.learning_rate / 2, base.learning_rate * 2)])


def _best_grid(base: Config) -> list[Setting]:
    return [
        Setting("write-up 1 recipe (seed-384x8)", recipe_preset="seed-384x8"),
        Setting("write-up 2 recipe (seed-256x6)", recipe_preset="seed-256x6"),
        Setting("best", recipe_preset="best"),
        Setting("heavy-aug", recipe_preset="heavy-aug"),
    ]


GRIDS: dict[str, Callable[[Config], list[Setting]]] = {
    "patch": _patch_grid,
    "shape": _shape_grid,
    "augment": _augment_grid,
    "regularise": _regularise_grid,
    "optimise": _optimise_grid,
    "best": _best_grid,
}


def recipe_grid_ignores(overrides: dict[str, Any]) -> list[str]:
    """The overridden fields a recipe preset does not take from the base (the `best` grid keeps each recipe's
    own batch, learning rate, EMA, ...), so a `--set` of them changes nothing there."""
    return [name for name in overrides if name not in BASE_FIELDS]


def setting_config(base: Config, setting: Setting, epochs: int, seed: int) -> Config:
    """The config one run trains: base (or a recipe preset at the base's size), the setting's changes,
    and the shared budget and seed."""
    config = base
    if setting.recipe_preset is not None:
        if setting.recipe_preset not in PRESETS:
            raise AblationError(f"preset {setting.recipe_preset!r} is not defined in jax_vit/configs.py")
        config = PRESETS[setting.recipe_preset].replace(**{name: getattr(base, name) for name in BASE_FIELDS})
    config = config.replace(**setting.changes)
    warmup = min(config.warmup_epochs, MAX_WARMUP_SHARE * epochs)
    return config.replace(epochs=epochs, warmup_epochs=warmup, seed=seed)
