"""Hugging Face transformers' `ViTModel` / `ViTForImageClassification` folders (config.json + model.safetensors).

The layout, from transformers/models/vit/modeling_vit.py and convert_vit_timm_to_pytorch.py:
`[vit.]embeddings.{cls_token, position_embeddings, patch_embeddings.projection}`,
`[vit.]encoder.layer.{i}.{layernorm_before, attention.attention.{query,key,value}, attention.output.dense,
layernorm_after, intermediate.dense, output.dense}`, `[vit.]layernorm`, then `classifier` (the classification
model, under the `vit.` prefix) or `pooler.dense` (`ViTModel`: a dense + tanh on the CLS token, the in21k
release's pre-logits layer). Queries, keys and values are separate (out, in) Linears, each head-major, which
concatenate into timm's and our fused QKV. The architecture, LayerNorm epsilon (default 1e-12), activation
and QKV bias come from config.json; the input normalisation from preprocessor_config.json.
"""
from __future__ import annotations

from pathlib import Path

import functools

import numpy as np

from jax_vit.pretrained.base import (Pretrained, PretrainedError, Tensors, block_params, grid_of, input_norm_of,
                                     read_json, read_safetensors, refuse, torch_linear, torch_norm)

# transformers' ACT2FN names for the two GELUs this model computes (activations.py).
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_ARCHITECTURES = ("ViTModel", "ViTForImageClassification")


def _weights(folder: Path, source: str) -> dict[str, np.ndarray]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return read_safetensors(single)
    if index.exists():  # sharded: the index maps every tensor to its file
        arrays = {}
        for name in sorted(set(read_json(index)["weight_map"].values())):
            arrays.update(read_safetensors(folder / name))
        return arrays
    other = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.h5")]
    hint = f" (it has {', '.join(other)}, which only torch/TensorFlow read)" if other else ""
    raise PretrainedError(f"{source}: no model.safetensors in {folder}{hint}; save the model with "
                          f"save_pretrained(..., safe_serialization=True) or download the repo's safetensors")


def load(folder: Path, source: str) -> Pretrained:
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type != "vit":
        raise refuse(source, f"a transformers model of type {model_type!r} (only model_type 'vit' is read)")
    architectures = config.get("architectures") or []
    unknown = [a for a in architectures if a not in _ARCHITECTURES]
    if unknown:
        raise refuse(source, f"a transformers {', '.join(unknown)}")
    activation = config.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        raise refuse(source, f"a ViT with the {activation!r} activation")
    width, heads = int(config.get("hidden_size", 768)), int(config.get("num_attention_heads", 12))
    patch, depth = int(config.get("patch_size", 16)), int(config.get("num_hidden_layers", 12))
    qkv_bias = bool(config.get("qkv_bias", True))

    arrays = _weights(folder, source)
    prefix = "vit." if any(n.startswith("vit.") for n in arrays) else ""
    tensors = Tensors(arrays, source)
    e = f"{prefix}embeddings."
    kernel = tensors.take(f"{e}patch_embeddings.projection.weight")  # (D, C, p, p)
    if kernel.shape[0] != width or kernel.shape[2:] != (patch, patch):
        raise PretrainedError(f"{source}: the patch embedding {kernel.shape} does not match config.json "
                              f"(hidden_size {width}, patch_size {patch})")
    pos_embed = tensors.take(f"{e}position_embeddings")
    grid = grid_of(pos_embed, source)

    linear, norm = functools.partial(torch_linear, tensors), functools.partial(torch_norm, tensors)

    blocks = {}
    for i in range(depth):
        layer = f"{prefix}encoder.layer.{i}."
        q, k, v = (linear(f"{layer}attention.attention.{n}", qkv_bias) for n in ("query", "key", "value"))
        qkv = (np.concatenate([q[0], k[0], v[0]], axis=1),
               np.concatenate([q[1], k[1], v[1]]) if qkv_bias else None)
        blocks[i] = block_params(norm(f"{layer}layernorm_before"), qkv, linear(f"{layer}attention.output.dense"),
                                 norm(f"{layer}layernorm_after"), linear(f"{layer}intermediate.dense"),
                                 linear(f"{layer}output.dense"))
    params = {
        "patch_embed": {"kernel": kernel.transpose(2, 3, 1, 0),
                        "bias": tensors.take(f"{e}patch_embeddings.projection.bias")},
        "cls_token": tensors.take(f"{e}cls_token"),
        "pos_embed": pos_embed,
        "blocks": blocks,
        "norm": {"scale": tensors.take(f"{prefix}layernorm.weight"), "bias": tensors.take(f"{prefix}layernorm.bias")},
    }
    notes = []
    if tensors.drop("classifier."):
        notes.append(f"classifier ({config.get('num_labels', len(config.get('id2label', {})))} classes) replaced by "
                     f"a zero-initialised head")
    if tensors.drop("pooler."):
        notes.append("pooler (dense + tanh on the CLS token: the in21k release's pre-logits) dropped, as the ViT "
                     "authors' fine-tuning drops pre_logits")
    if tensors.drop(f"{e}mask_token"):
        notes.append("mask_token (masked image modelling only) dropped")
    tensors.check_all_taken()

    processor = folder / "preprocessor_config.json"
    if processor.exists() and "image_mean" in (pre := read_json(processor)):
        input_norm = input_norm_of(pre["image_mean"], pre["image_std"], source)
    else:  # ViTImageProcessor's defaults: IMAGENET_STANDARD_MEAN/STD, 0.5 and 0.5
        input_norm = "inception"
        notes.append("no preprocessor_config.json: input normalisation is ViTImageProcessor's default (0.5, 0.5)")
    return Pretrained(
        source=source, format="transformers", path=str(folder),
        architecture={"width": width, "depth": depth, "num_heads": heads,
                      "mlp_dim": int(config.get("intermediate_size", 4 * width)), "patch_size": patch,
                      "layer_norm_epsilon": float(config.get("layer_norm_eps", 1e-12)),
                      "gelu_approximation": _ACTIVATIONS[activation], "qkv_bias": qkv_bias},
        resolution=grid * patch, in_channels=kernel.shape[1], input_norm=input_norm, params=params,
        notes=tuple(notes),
    )
