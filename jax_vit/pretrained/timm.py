"""timm's `VisionTransformer` state dict (Hugging Face Hub `timm/vit_*` repos: model.safetensors + config.json).

The layout, from timm/models/vision_transformer.py (`VisionTransformer.__init__`, `Block`, `Attention`, `Mlp`):
`cls_token` (1, 1, D), `pos_embed` (1, 1 + grid^2, D), `patch_embed.proj.{weight (D, C, p, p), bias}`,
`blocks.{i}.norm1`, `blocks.{i}.attn.qkv.{weight (3D, D), bias}` (rows: all heads' queries, then keys, then
values, each head-major: the split `reshape(B, N, 3, heads, head_dim)` undoes), `blocks.{i}.attn.proj`,
`blocks.{i}.norm2`, `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head`. torch's Linear weights are
(out, in) and its conv kernels OIHW; ours are (in, out) and HWIO. LayerNorm epsilon 1e-6 (timm's LayerNorm),
exact GELU (nn.GELU), unless the repo's config.json `model_args` say otherwise.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jax_vit.pretrained.base import (HEADS_BY_WIDTH, Pretrained, PretrainedError, Tensors, block_params, grid_of,
                                     input_norm_of, read_json, read_safetensors, refuse, torch_linear, torch_norm)

# Variants that are not a plain class-token ViT, by the tensors that give them away (timm's own names).
_VARIANTS = (
    ("dist_token", "DeiT's distillation token (deit_*_distilled)"),
    ("head_dist.", "DeiT's distillation head (deit_*_distilled)"),
    ("patch_embed.backbone.", "a hybrid (a CNN backbone before the patch embedding, vit_*_r*)"),
    ("fc_norm.", "a global-average-pool head (fc_norm)"),
    ("attn_pool.", "an attention-pool (MAP) head"),
    ("reg_token", "a ViT with register tokens"),
    ("norm_pre.", "a CLIP-style ViT (a LayerNorm before the blocks)"),
    ("patch_embed.norm.", "a ViT with a normalised patch embedding"),
)
_BLOCK_VARIANTS = (
    (".ls1.", "a ViT with LayerScale (init_values)"),
    (".q_norm.", "a ViT with query/key normalisation (qk_norm)"),
    (".attn.norm.", "a ViT with a norm inside attention"),
    (".mlp.norm.", "a ViT with a norm inside the MLP"),
    (".mlp.fc1_g.", "a ViT with a gated (SwiGLU) MLP"),
)
_TANH_ACTIVATIONS = ("gelu_tanh",)


def looks_like_timm(names) -> bool:
    return "patch_embed.proj.weight" in names or any(n.startswith("blocks.0.") for n in names)


def load(weights: Path, source: str, config_json: dict[str, Any] | None = None,
         num_heads: int | None = None) -> Pretrained:
    """A timm ViT from its safetensors file and, where there is one, the repo's config.json. `num_heads`: the
    head count where neither config.json nor the published sizes give it (a timm state dict has none)."""
    tensors = Tensors(read_safetensors(weights), source)
    config_json = config_json or {}
    model_args = config_json.get("model_args") or {}
    for prefix, what in _VARIANTS:
        if any(n == prefix or n.startswith(prefix) for n in tensors.names()):
            raise refuse(source, what)
    for part, what in _BLOCK_VARIANTS:
        if any(n.startswith("blocks.") and part in n for n in tensors.names()):
            raise refuse(source, what)
    if "patch_embed.proj.weight" not in tensors:
        raise PretrainedError(f"{source} is not a timm ViT (no patch_embed.proj.weight); supported: class-token ViTs")
    if "cls_token" not in tensors:
        raise refuse(source, "a ViT without a class token (class_token=False)")
    pool = model_args.get("global_pool", config_json.get("global_pool", "token"))
    if pool != "token":
        raise refuse(source, f"a ViT pooled by {pool!r} (global_pool)")
    activation = model_args.get("act_layer")
    if activation not in (None, "gelu", *_TANH_ACTIVATIONS):
        raise refuse(source, f"a ViT with the {activation!r} activation")

    kernel = tensors.take("patch_embed.proj.weight")  # (D, C, p, p)
    if kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3]:
        raise refuse(source, f"a patch embedding of shape {kernel.shape}")
    width, in_channels, patch = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    pos_embed = tensors.take("pos_embed")
    grid = grid_of(pos_embed, source)
    depth = len({n.split(".")[1] for n in tensors.names() if n.startswith("blocks.")})
    num_heads = model_args.get("num_heads") or num_heads or HEADS_BY_WIDTH.get(width)
    if num_heads is None:
        raise PretrainedError(f"{source}: the number of attention heads of a width-{width} timm ViT is not recorded "
                              f"(no config.json model_args); give it with --set num_heads=N")
    qkv_bias = "blocks.0.attn.qkv.bias" in tensors

    linear, norm = functools.partial(torch_linear, tensors), functools.partial(torch_norm, tensors)

    blocks = {}
    for i in range(depth):
        b = f"blocks.{i}"
        blocks[i] = block_params(norm(f"{b}.norm1"), linear(f"{b}.attn.qkv", qkv_bias), linear(f"{b}.attn.proj"),
                                 norm(f"{b}.norm2"), linear(f"{b}.mlp.fc1"), linear(f"{b}.mlp.fc2"))
    params = {
        "patch_embed": {"kernel": kernel.transpose(2, 3, 1, 0), "bias": tensors.take("patch_embed.proj.bias")},
        "cls_token": tensors.take("cls_token"),
        "pos_embed": pos_embed,
        "blocks": blocks,
        "norm": {"scale": tensors.take("norm.weight"), "bias": tensors.take("norm.bias")},
    }
    notes = []
    head = tensors.drop("head.")
    if head:
        notes.append(f"head ({tensors.arrays['head.weight'].shape[0]} classes) replaced by a zero-initialised one")
    tensors.check_all_taken()

    pretrained_cfg = config_json.get("pretrained_cfg") or {}
    if "mean" in pretrained_cfg and "std" in pretrained_cfg:
        input_norm = input_norm_of(pretrained_cfg["mean"], pretrained_cfg["std"], source)
    else:
        # timm's default for its ViTs (vision_transformer._cfg: IMAGENET_INCEPTION_MEAN/STD).
        input_norm = "inception"
        notes.append("no config.json pretrained_cfg: input normalisation assumed to be timm's ViT default "
                     "(mean 0.5, std 0.5)")
    if not model_args.get("num_heads"):
        notes.append(f"{num_heads} heads: not recorded in the checkpoint (" + (
            "as given" if num_heads != HEADS_BY_WIDTH.get(width) else f"the published ViT of width {width}") + ")")
    return Pretrained(
        source=source, format="timm", path=str(weights),
        architecture={"width": width, "depth": depth, "num_heads": int(num_heads), "mlp_dim": blocks[0]["mlp"]["fc1"]
                      ["kernel"].shape[1], "patch_size": patch, "layer_norm_epsilon": 1e-6,
                      "gelu_approximation": "tanh" if activation in _TANH_ACTIVATIONS else "none",
                      "qkv_bias": qkv_bias},
        resolution=grid * patch, in_channels=in_channels, input_norm=input_norm, params=params, notes=tuple(notes),
    )

