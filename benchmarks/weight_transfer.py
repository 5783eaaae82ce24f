"""Flax ViT weights -> PyTorch ViT, through plain NumPy arrays.

The two models share parameter paths (`blocks.0.attention.qkv`), so the transfer only renames the leaf
(`kernel`/`scale` -> `weight`) and changes layouts: a Flax Linear kernel is (in, out) and PyTorch's weight
is (out, in); a Flax Conv kernel is (kh, kw, in, out) and PyTorch's is (out, in, kh, kw).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flax import nnx


def flax_params_to_numpy(params) -> dict[str, np.ndarray]:
    """`{"blocks.0.attention.qkv.kernel": array, ...}` from a Flax model, its `nnx.State`, or the pure
    nested dict the train state holds (`nnx.split(model)[1].to_pure_dict()`)."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = params.to_pure_dict()
    flat = {}

    def visit(prefix: str, node) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                visit(f"{prefix}{key}.", child)
        else:
            flat[prefix[:-1]] = np.array(node, dtype=np.float32)  # a writable float32 copy

    visit("", params)
    return flat


def flax_to_torch_name_and_layout(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    prefix, _, leaf = name.rpartition(".")
    if leaf == "kernel" and value.ndim == 4:
        return f"{prefix}.weight", value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return f"{prefix}.weight", value.T
    if leaf == "scale":
        return f"{prefix}.weight", value
    return name, value  # biases, cls_token and pos_embed keep name and layout


def torch_to_flax_name_and_layout(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """The inverse of `flax_to_torch_name_and_layout`, to compare updated parameters in one layout."""
    prefix, _, leaf = name.rpartition(".")
    if leaf == "weight" and value.ndim == 4:
        return f"{prefix}.kernel", value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 2:
        return f"{prefix}.kernel", value.T
    if leaf == "weight":
        return f"{prefix}.scale", value
    return name, value


def to_torch_state_dict(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in flat.items():
        torch_name, torch_value = flax_to_torch_name_and_layout(name, np.asarray(value))
        out[torch_name] = torch.from_numpy(np.ascontiguousarray(torch_value, dtype=np.float32))
    return out


def torch_params_to_flax_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The PyTorch model's parameters, renamed and laid out as `flax_params_to_numpy` gives them."""
    return dict(
        torch_to_flax_name_and_layout(name, p.detach().float().cpu().numpy())
        for name, p in model.named_parameters()
    )


def load_flax_weights(torch_model: torch.nn.Module, flax_model_or_state) -> torch.nn.Module:
    """Copy every Flax parameter into `torch_model`; a missing or extra parameter is an error (strict)."""
    state_dict = to_torch_state_dict(flax_params_to_numpy(flax_model_or_state))
    torch_model.load_state_dict(state_dict, strict=True)
    return torch_model
