"""`load_pretrained(name or path)`: any supported checkpoint as a `Pretrained`; `init_params`: its weights for a
model config (position embeddings on the config's grid, input channels adapted, a new zero head)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from jax_vit.configs import Config
from jax_vit.pretrained import hf, hub, npz, run, timm
from jax_vit.pretrained.base import SUPPORTED, Pretrained, PretrainedError, read_json, read_safetensors
from jax_vit.pretrained.posemb import resize_posemb


def load_pretrained(source: str, *, download: bool = False, num_heads: int | None = None) -> Pretrained:
    """Reads `source`: a timm or transformers safetensors file or folder, a ViT authors' .npz, a jax_vit workdir,
    or a Hugging Face Hub repo id (from the local cache; fetched first with `download`). `num_heads` is used
    only where the checkpoint does not record it (a bare timm state dict of an unpublished width)."""
    path = hub.resolve(source, download=download)
    if path.is_dir():
        if run.is_run(path):
            return run.load(path, source)
        config_path = path / "config.json"
        if config_path.exists():
            config = read_json(config_path)
            if "model_type" in config:
                return hf.load(path, source)
            if "architecture" in config:
                weights = path / "model.safetensors"
                if not weights.exists():
                    raise PretrainedError(f"{source}: no model.safetensors in {path}; download the repo's safetensors "
                                          f"weights (--download fetches them)")
                return timm.load(weights, source, config, num_heads)
        if (path / "model.safetensors").exists():
            return timm.load(path / "model.safetensors", source, num_heads=num_heads)
        raise PretrainedError(f"{path} holds no checkpoint (neither run.json + checkpoints/, config.json nor "
                              f"model.safetensors); {SUPPORTED}")
    if path.suffix == ".npz":
        return npz.load(path, source)
    if path.suffix == ".safetensors":
        config_path = path.parent / "config.json"
        config = read_json(config_path) if config_path.exists() else None
        if config and "model_type" in config and path.name == "model.safetensors":
            return hf.load(path.parent, source)
        if timm.looks_like_timm(list(_safetensors_names(path))):
            return timm.load(path, source, config if config and "architecture" in config else None, num_heads)
        if config is None and any(n.endswith("patch_embeddings.projection.weight") for n in _safetensors_names(path)):
            raise PretrainedError(f"{source} is in transformers' layout: pass the folder holding it with its "
                                  f"config.json (save_pretrained writes both)")
        raise PretrainedError(f"{source} is not a ViT state dict (no patch_embed.proj.weight); {SUPPORTED}")
    raise PretrainedError(f"{source}: unknown checkpoint file type {path.suffix!r}; {SUPPORTED}")


def _safetensors_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError):
        return list(read_safetensors(path))  # raises the one-line error


def adapt_input_channels(kernel: np.ndarray, channels: int, source: str) -> np.ndarray:
    """A (p, p, C, width) patch kernel for `channels` inputs that embeds a grey image as the original did: one
    channel from many sums them, many from one share it (timm's adapt_input_conv does the same two)."""
    have = kernel.shape[2]
    if have == channels:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if have == 1:
        return np.repeat(kernel, channels, axis=2) / channels
    raise PretrainedError(f"{source} takes {have}-channel images and the dataset has {channels}; only 1 <-> N "
                          f"channels can be adapted")


def init_params(pretrained: Pretrained, config: Config) -> dict:
    """The checkpoint's weights for `config` (its architecture already taken from the checkpoint): the position
    embeddings resized to the config's patch grid (bit-identical where it is the checkpoint's own), the patch
    kernel adapted to the dataset's channels, and a zero-initialised head for its classes."""
    params = copy.deepcopy(pretrained.params)
    params["patch_embed"]["kernel"] = adapt_input_channels(params["patch_embed"]["kernel"], config.in_channels,
                                                           pretrained.source)
    params["pos_embed"] = resize_posemb(params["pos_embed"], config.input_size // config.patch_size)
    params["head"] = {"kernel": np.zeros((config.width, config.num_classes), np.float32),
                      "bias": np.zeros((config.num_classes,), np.float32)}
    return params
