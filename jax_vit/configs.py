"""Presets, each defined once, and `--set key=value` overrides.

A config is one flat, frozen dataclass: the model's fields and the recipe's fields side by side, so an
experiment is a preset plus a few overrides, never a code change.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from jax_vit.data import DATASETS


class ConfigError(ValueError):
    """An unknown preset, an unknown override key, a value of the wrong type or out of its range."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a setting may take: `low` to `high` (None: unbounded), an `open` end excluding its bound.

    A bound may name another config field ("learning_rate"): `contains` then takes its value from `refs`.
    Values must be finite (NaN and inf are refused everywhere); `integer` ranges take ints only.
    """
    low: float | str | None = None
    high: float | str | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: Any, refs: dict[str, Any] | None = None) -> bool:
        kinds = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        low, high = ((refs or {}).get(b, b) if isinstance(b, str) else b for b in (self.low, self.high))
        if low is not None and (value <= low if self.low_open else value < low):
            return False
        return high is None or (value < high if self.high_open else value <= high)

    def __str__(self) -> str:
        noun = "an integer" if self.integer else "a value"
        low, high = (b if isinstance(b, str) else f"{b:g}" if isinstance(b, float) else str(b)
                     for b in (self.low, self.high))
        if self.high is None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{noun} {'<' if self.high_open else '<='} {high}"
        return f"{noun} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def parse(self, text: str) -> int | float:
        """An argparse `type=`: the number in `text`, or argparse's one-line error naming this range."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if self.integer else 'a number'}: "
                                             f"use {self}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {self}")
        return value


POSITIVE_INT = Range(1, integer=True)
COUNT = Range(0, integer=True)  # 0 allowed: "none" or "off"
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
BELOW_ONE = Range(0, 1, high_open=True)  # a rate of 1 drops everything, a decay of 1 never moves
SEED = Range(0, 2**32, high_open=True, integer=True)  # numpy's and jax.random's seeds alike


@dataclasses.dataclass(frozen=True)
class Config:
    # Data: set by the trainer from --dataset (normalisation statistics and channel count follow it).
    dataset: str = "cifar10"
    # Model.
    image_size: int = 32
    in_channels: int = 3  # set from the dataset (1 for Fashion-MNIST)
    num_classes: int = 10
    patch_size: int = 4
    width: int = 384
    depth: int = 8
    num_heads: int = 6
    mlp_dim: int = 1536
    # What pretrained checkpoints differ in (jax_vit/pretrained/ sets them from the checkpoint): LayerNorm's
    # epsilon (timm and the ViT authors 1e-6, Hugging Face's ViT 1e-12), the MLP's GELU ("none": exact erf, as
    # timm and Hugging Face compute it; "tanh": the ViT authors' Flax `nn.gelu`) and a bias on the QKV projection.
    layer_norm_epsilon: float = 1e-6
    gelu_approximation: str = "none"
    qkv_bias: bool = True
    # The model's input size: the step resizes the (crop-and-flipped) images to it inside jit, so a 32x32
    # dataset stays uint8 32x32 on the device; 0 feeds the images as they are (image_size).
    resolution: int = 0
    # Pixel normalisation: "dataset" (the training set's own statistics), or what a pretrained model saw:
    # "inception" (mean 0.5, std 0.5 per channel: the ViT authors' (x - 127.5) / 127.5, timm's
    # IMAGENET_INCEPTION_*, transformers' IMAGENET_STANDARD_*) or "imagenet" (0.485/0.229, ...).
    input_norm: str = "dataset"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.2  # rises linearly from 0 at the first block to this at the last
    # "auto": bfloat16 on TPUs and Ampere+ GPUs, float16 with loss scaling on V100/T4/P100, float32 on CPU
    # (jax_vit/precision.py); params and optimiser state stay float32.
    compute_dtype: str = "auto"
    # The attention's implementation: "xla" (jax_vit.model.attention_core, two einsums, any device) or "cudnn"
    # (cuDNN's fused kernel through jax.nn.dot_product_attention, NVIDIA GPUs with bfloat16/float16 compute).
    # "xla" stays the default until a GPU measurement says otherwise.
    attention: str = "xla"
    # The train step runs the model on this many slices of each device's batch, which XLA:CPU overlaps on its
    # cores (jax_vit/train_step.py, micro_batch_count); 0: automatic, one per core on the CPU (at most 2), 1
    # on GPUs and TPUs. It changes speed and the dropout masks drawn, nothing else.
    micro_batches: int = 0
    # Recipe.
    epochs: int = 100
    # A run defined in optimiser steps (fine-tuning): when above 0 the run stops after exactly this many steps
    # (its last epoch cut short) and the schedule spans them; the trainer then derives `epochs` from it.
    total_steps: int = 0
    batch_size: int = 256  # global, split over all local devices
    optimizer: str = "adamw"  # or "sgd": momentum SGD, the ViT authors' transfer recipe
    learning_rate: float = 1e-3  # peak, reached after the warm-up
    min_learning_rate: float = 1e-5
    warmup_epochs: float = 5.0
    warmup_steps: int = 0  # above 0: the warm-up in steps, in place of warmup_epochs
    weight_decay: float = 0.05  # AdamW's decoupled decay; SGD's L2 term (both on kernels only)
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9  # SGD only
    # Layer-wise learning-rate decay: block i of `depth` learns at layer_decay ** (depth - i) times the rate,
    # the patch and position embeddings and the CLS token at layer_decay ** (depth + 1), the head and final
    # norm at the full rate (BEiT's rule); 1 turns it off.
    layer_decay: float = 1.0
    label_smoothing: float = 0.1
    grad_clip_norm: float = 1.0
    # Exponential moving average of the weights, kept in the train state, evaluated beside the raw weights
    # and checkpointed with them; 0 turns it off. The effective decay warms up as min(decay, (1+t)/(10+t)).
    ema_decay: float = 0.0
    # Augmentation, applied on the device inside jit.
    crop_padding: int = 4
    random_flip: bool = True
    # Recipe augmentations (jax_vit/randaugment.py, jax_vit/mixing.py); all off by default.
    randaugment_ops: int = 0  # RandAugment: ops drawn per image; 0 turns it off
    randaugment_magnitude: float = 9.0  # on the RandAugment paper's 0..10 scale
    trivial_augment: bool = False  # TrivialAugment instead: one op per image at a uniform random magnitude
    random_erasing: float = 0.0  # probability per image of erasing a random box (after normalisation)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0 turns Mixup off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) box area; 0 turns CutMix off
    mix_prob: float = 1.0  # probability a batch is mixed at all (when an alpha is above 0)
    mix_switch_prob: float = 0.5  # with both alphas on: probability of CutMix rather than Mixup
    seed: int = 0

    @property
    def input_size(self) -> int:
        """The side of the images the model sees: `resolution`, or the dataset's own `image_size`."""
        return self.resolution or self.image_size

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Our recipe, from our measurements (README, "What matters for a ViT on CIFAR-10"): the first write-up's
# model and optimiser, so the comparison isolates the rest; Mixup 0.8 / CutMix 1.0 (+4.7 points of
# validation accuracy at 150 epochs on the CIFAR-10 sample), DropPath 0.1, label smoothing 0.1 and an
# EMA of the weights. RandAugment is off: at 150 epochs it was no help alone and cost 8 points with mixing.
# Against the write-ups' first recipe at the same budget it trails at short budgets, ties at 100-150 epochs
# and leads at 200 (CIFAR-10 sample, 4x4 patches, small model: +5.1 test points, three seeds); on
# Fashion-MNIST it ties at 8x8 patches, 0.23M parameters and 200 epochs and 1.21M and 100 epochs (neither
# overfits there); 4x4 patches and full size need a GPU.
_BEST = Config(
    width=384, depth=8, num_heads=6, mlp_dim=1536, patch_size=4, drop_path_rate=0.1,
    label_smoothing=0.1, epochs=200, warmup_epochs=5.0, ema_decay=0.999,
    mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0,
)

PRESETS: dict[str, Config] = {
    # First write-up (87% claimed): small patches, width 384, depth 8, heavy regularisation.
    "seed-384x8": Config(width=384, depth=8, num_heads=6, mlp_dim=1536, patch_size=4, drop_path_rate=0.2),
    # Second write-up: width 256, depth 6, 8 heads, MLP 512, dropout 0.1, lr 3e-4, batch 128, 100 epochs.
    "seed-256x6": Config(
        width=256, depth=6, num_heads=8, mlp_dim=512, patch_size=4, dropout=0.1, drop_path_rate=0.0,
        learning_rate=3e-4, batch_size=128, epochs=100,
    ),
    "best": _BEST,
    # The augmentation public from-scratch CIFAR-10 ViTs rely on (RandAugment 2 ops at magnitude 9, random
    # erasing 0.25) on top of `best`: our `best` until our measurements replaced it, kept so the long GPU
    # runs can test it against `best`.
    "heavy-aug": _BEST.replace(randaugment_ops=2, randaugment_magnitude=9.0, random_erasing=0.25),
    # A few small layers: CPU tests and quick runs. 8x8 patches (16 tokens + CLS) make a step about 7x
    # cheaper than 4x4 on a CPU, which is what lets the learning test reach real accuracy in minutes.
    "tiny": Config(
        width=96, depth=3, num_heads=3, mlp_dim=192, patch_size=8, drop_path_rate=0.0,
        learning_rate=2e-3, batch_size=64, epochs=10, warmup_epochs=1.0,
    ),
}


# Fine-tuning presets, for scripts/finetune.py only: they hold a recipe and no model (the model's shape, LayerNorm
# epsilon, GELU and input normalisation come from the checkpoint, `epochs` from total_steps and the data), so
# scripts/train.py, which trains from scratch, does not offer them.
FINETUNE_PRESETS: dict[str, Config] = {
    # Fine-tuning a pretrained ViT (jax_vit/finetune.py; the model's shape, LayerNorm epsilon, GELU and input
    # normalisation come from the checkpoint, `epochs` from total_steps and the data). The ViT authors' transfer
    # recipe (vit_jax/configs/common.py): momentum SGD 0.9 without weight decay, gradient clipping at global norm
    # 1, batch 512, a linear warm-up then cosine decay to 0, no label smoothing, no dropout; base_lr 0.03 is
    # their default (their paper picks it from {0.001, 0.003, 0.01, 0.03} on 2% of the training set held out:
    # --val-fraction 0.02). 500 steps with 50 of warm-up is their README's short CIFAR-10 schedule (98.59% for
    # ViT-B/16 from ImageNet-21k at 384 px); their full one is 10k steps, 500 of warm-up.
    "finetune-sgd": Config(
        optimizer="sgd", momentum=0.9, learning_rate=0.03, min_learning_rate=0.0, weight_decay=0.0,
        grad_clip_norm=1.0, batch_size=512, total_steps=500, warmup_steps=50, epochs=1, warmup_epochs=0.0,
        label_smoothing=0.0, dropout=0.0, drop_path_rate=0.0,
    ),
    # The AdamW alternative with layer-wise learning-rate decay (BEiT/MAE-style fine-tuning: decay 0.75, weight
    # decay 0.05, DropPath 0.1, label smoothing 0.1). Its peak rate is a starting point, not a measured
    # optimum: choose it on a validation split like the SGD recipe's.
    "finetune-adamw-lld": Config(
        optimizer="adamw", learning_rate=5e-4, min_learning_rate=1e-6, weight_decay=0.05, layer_decay=0.75,
        grad_clip_norm=1.0, batch_size=512, total_steps=1000, warmup_steps=100, epochs=1, warmup_epochs=0.0,
        label_smoothing=0.1, dropout=0.0, drop_path_rate=0.1,
    ),
}

# Every field's valid values: a Range, or a tuple of the choices. A named bound is checked after its field.
FIELD_RULES: dict[str, Range | tuple] = {
    "dataset": tuple(DATASETS),
    **dict.fromkeys(("image_size", "in_channels", "num_classes", "patch_size", "width", "depth", "num_heads",
                     "mlp_dim", "epochs", "batch_size"), POSITIVE_INT),
    **dict.fromkeys(("dropout", "attention_dropout", "drop_path_rate", "label_smoothing", "b1", "b2", "ema_decay"),
                    BELOW_ONE),
    # What the code computes in: jax_vit.precision and the PyTorch baseline's autocast both know these
    # (float16 with dynamic loss scaling in both train steps).
    "compute_dtype": ("auto", "float32", "bfloat16", "float16"),
    "attention": ("xla", "cudnn"),  # "cudnn" also needs an NVIDIA GPU: model.check_attention, once it is known
    "layer_norm_epsilon": POSITIVE,
    "gelu_approximation": ("none", "tanh"),  # the two forms jax.nn.gelu and torch's F.gelu both compute
    "qkv_bias": (True, False),
    "resolution": COUNT,  # 0: no resize
    "input_norm": ("dataset", "inception", "imagenet"),
    "total_steps": COUNT,  # 0: epochs x steps per epoch
    "micro_batches": COUNT,  # 0: automatic
    "optimizer": ("adamw", "sgd"),
    "learning_rate": POSITIVE,
    "min_learning_rate": Range(0, "learning_rate"),  # a floor above the peak would make the cosine rise
    "warmup_epochs": Range(0, "epochs"),
    "warmup_steps": Range(0, "total_steps", integer=True),  # only for a run defined in steps
    "weight_decay": NON_NEGATIVE,
    "momentum": BELOW_ONE,
    "layer_decay": Range(0, 1, low_open=True),  # 1: every layer at the full rate
    # optax.clip_by_global_norm scales every update to at most this norm: 0 would zero them all (there is
    # no "off": a large value such as 1e9 never clips).
    "grad_clip_norm": POSITIVE,
    "crop_padding": Range(0, "image_size", high_open=True, integer=True),
    "random_flip": (True, False),
    "randaugment_ops": COUNT,
    "randaugment_magnitude": Range(0, 10),  # randaugment.MAX_MAGNITUDE: the RandAugment paper's 0..10 scale
    "trivial_augment": (True, False),
    "random_erasing": PROBABILITY,
    "mixup_alpha": NON_NEGATIVE,
    "cutmix_alpha": NON_NEGATIVE,
    "mix_prob": PROBABILITY,
    "mix_switch_prob": PROBABILITY,
    "seed": SEED,
}


def check_config(config: Config) -> Config:
    """`config` itself, or ConfigError naming the first field out of its range and the range to use.

    get_config calls it; call it on a config built with `replace` before training it."""
    for name, rule in FIELD_RULES.items():
        value = getattr(config, name)
        if isinstance(rule, Range):
            refs = {b: getattr(config, b) for b in (rule.low, rule.high) if isinstance(b, str)}
            if not rule.contains(value, refs):
                where = "".join(f" ({k}={v!r})" for k, v in refs.items())
                raise ConfigError(f"{name}={value!r} is out of range: use {rule}{where}, e.g. with --set {name}=...")
        elif value not in rule or isinstance(value, bool) != isinstance(rule[0], bool):
            raise ConfigError(f"{name}={value!r} is out of range: use one of {', '.join(map(str, rule))} "
                              f"(--set {name}=...)")
    if config.resolution and config.resolution % config.patch_size:
        multiples = sorted({max(1, config.resolution // config.patch_size), config.resolution // config.patch_size + 1})
        raise ConfigError(f"patch_size {config.patch_size} does not divide resolution {config.resolution}: use a "
                          f"multiple of {config.patch_size} (e.g. --resolution "
                          f"{' or '.join(str(m * config.patch_size) for m in multiples)})")
    if config.image_size % config.patch_size and not config.resolution:
        raise ConfigError(f"patch_size {config.patch_size} does not divide image_size {config.image_size}")
    if config.width % config.num_heads:
        raise ConfigError(f"width {config.width} is not divisible by num_heads {config.num_heads}")
    return config


def _parse_value(key: str, raw: str, current: Any) -> Any:
    kind = type(current)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return lowered in {"true", "1", "yes"}
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: expected a {kind.__name__}") from None


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """`["depth=4", "dropout=0.1"]` -> `{"depth": "4", "dropout": "0.1"}` (values parsed later)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, for example --set depth=6")
        out[key.strip().replace("-", "_")] = value
    return out


def get_config(preset: str, overrides: dict[str, Any] | None = None,
               presets: dict[str, Config] | None = None) -> Config:
    """A preset of `presets` (default PRESETS; FINETUNE_PRESETS for fine-tuning) with overrides applied; string
    values are parsed to the field's type, then range-checked."""
    presets = PRESETS if presets is None else presets
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    config = presets[preset]
    fields = {f.name for f in dataclasses.fields(Config)}
    changes = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        current = getattr(config, key)
        changes[key] = _parse_value(key, value, current) if isinstance(value, str) else value
    return check_config(config.replace(**changes))


def config_changes(before: dict[str, Any], after: dict[str, Any], limit: int = 4) -> str:
    """The fields two config dicts differ in, as "key: old -> new" (the first `limit`); "" when equal.
    For a run that is to be continued with the settings it started with."""
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:limit])

