"""A Vision Transformer trained on CIFAR-10 with JAX, Flax NNX and Optax.

    from jax_vit import get_config, load_dataset, train_and_evaluate, VisionTransformer
    config = get_config("tiny", {"epochs": 5})
    summary = train_and_evaluate(config, load_dataset("cifar10", "data"), "runs/tiny")

The names below load lazily, so `import jax_vit.allocator` (which the scripts run before JAX is imported, to
re-execute under tcmalloc) stays free of JAX.
"""
from __future__ import annotations

import importlib

from jax_vit import _deps

_deps.require_vit_extra()  # a missing package is one line naming `pip install "vit-sam2-lab[vit]"`

_EXPORTS = {
    "Config": "jax_vit.configs",
    "get_config": "jax_vit.configs",
    "VisionTransformer": "jax_vit.model",
    "load_dataset": "jax_vit.data",
    "train_and_evaluate": "jax_vit.train",
    "evaluate_run": "jax_vit.evaluate",
    "load_pretrained": "jax_vit.pretrained.loader",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jax_vit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
