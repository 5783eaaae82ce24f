"""The ViT authors' .npz checkpoints (gs://vit_models/imagenet21k/*.npz, gs://vit_models/augreg/*.npz).

The layout, from google-research/vision_transformer (vit_jax/models_vit.py; vit_jax/checkpoint.py `load`, which
reads the flat '/'-joined names and maps them with flax's `convert_pre_linen`) and timm's `_load_weights`,
which reads the same files: `embedding/{kernel (p, p, C, D), bias}`, `cls` (1, 1, D),
`Transformer/posembed_input/pos_embedding` (1, 1 + grid^2, D), `Transformer/encoderblock_{i}/` with
`LayerNorm_0`, `MultiHeadDotProductAttention_1/{query,key,value}/{kernel (D, heads, head_dim), bias (heads,
head_dim)}`, `MultiHeadDotProductAttention_1/out/{kernel (heads, head_dim, D), bias}`, `LayerNorm_2`,
`MlpBlock_3/Dense_{0,1}` (pre-Linen numbering: one counter across a block's submodules),
`Transformer/encoder_norm`, `head`, and in the original in21k release `pre_logits` (dense + tanh). Some files
prefix every name with `opt/target/` (the optimiser's copy). Their model is Flax: LayerNorm epsilon 1e-6,
`nn.gelu` (the tanh approximation), inputs scaled to [-1, 1].
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from jax_vit.pretrained.base import Pretrained, PretrainedError, Tensors, block_params, grid_of, refuse


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise PretrainedError(f"{path} is not a readable .npz file ({error}); download it again (the ViT authors' "
                              f"files are under https://storage.googleapis.com/vit_models/)") from None


def load(path: Path, source: str) -> Pretrained:
    arrays = read_npz(path)
    prefix = "opt/target/" if "opt/target/embedding/kernel" in arrays else ""
    names = [n[len(prefix):] for n in arrays if n.startswith(prefix)]
    if any(n.startswith("params/") for n in arrays) or "pos_embedding" in names or any(
            n.startswith("Transformer/encoderblock/") for n in names):
        raise refuse(source, "a big_vision checkpoint (params/..., a scanned encoderblock): only the vit_jax layout "
                             "of the imagenet21k and augreg releases is read")
    if "conv_root/kernel" in names:
        raise refuse(source, "a hybrid (R50+ViT: a ResNet root before the patch embedding)")
    if any(n.startswith("MAPHead_0/") for n in names):
        raise refuse(source, "an attention-pool (MAP) head")
    if "embedding/kernel" not in names:
        raise PretrainedError(f"{source} is not a ViT checkpoint in the ViT authors' layout (no embedding/kernel)")
    if "cls" not in names:
        raise refuse(source, "a ViT without a class token (classifier 'gap')")
    tensors = Tensors({n[len(prefix):]: v for n, v in arrays.items() if n.startswith(prefix)}, source)
    tensors.drop("opt/")  # the rest of an optimiser state, if saved with it

    kernel = tensors.take("embedding/kernel")  # HWIO already
    patch, in_channels, width = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    pos_embed = tensors.take("Transformer/posembed_input/pos_embedding")
    grid = grid_of(pos_embed, source)
    depth = len({m.group(1) for n in tensors.names() if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))})
    first_query = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    if first_query not in tensors or tensors.arrays[first_query].ndim != 3:
        raise refuse(source, "a checkpoint without the vit_jax encoder blocks (no encoderblock_0 attention)")
    heads = tensors.arrays[first_query].shape[1]

    def dense(name):
        return tensors.take(f"{name}/kernel"), tensors.take(f"{name}/bias")

    def norm(name):
        return tensors.take(f"{name}/scale"), tensors.take(f"{name}/bias")

    blocks = {}
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        attention = f"{b}MultiHeadDotProductAttention_1/"
        q, k, v = (dense(f"{attention}{n}") for n in ("query", "key", "value"))
        qkv = (np.concatenate([x[0].reshape(width, width) for x in (q, k, v)], axis=1),
               np.concatenate([x[1].reshape(width) for x in (q, k, v)]))
        out_kernel, out_bias = dense(f"{attention}out")
        blocks[i] = block_params(norm(f"{b}LayerNorm_0"), qkv, (out_kernel.reshape(width, width), out_bias),
                                 norm(f"{b}LayerNorm_2"), dense(f"{b}MlpBlock_3/Dense_0"),
                                 dense(f"{b}MlpBlock_3/Dense_1"))
    params = {
        "patch_embed": {"kernel": kernel, "bias": tensors.take("embedding/bias")},
        "cls_token": tensors.take("cls"),
        "pos_embed": pos_embed,
        "blocks": blocks,
        "norm": {"scale": tensors.take("Transformer/encoder_norm/scale"),
                 "bias": tensors.take("Transformer/encoder_norm/bias")},
    }
    notes = []
    if tensors.drop("head/"):
        notes.append(f"head ({tensors.arrays['head/bias'].shape[-1]} classes) replaced by a zero-initialised one")
    if tensors.drop("pre_logits/"):
        notes.append("pre_logits (dense + tanh, the representation layer) dropped: the ViT authors' own "
                     "fine-tuning drops it (checkpoint.load_pretrained, representation_size None)")
    tensors.check_all_taken()
    return Pretrained(
        source=source, format="vit_jax npz", path=str(path),
        architecture={"width": width, "depth": depth, "num_heads": heads,
                      "mlp_dim": blocks[0]["mlp"]["fc1"]["kernel"].shape[1], "patch_size": patch,
                      "layer_norm_epsilon": 1e-6, "gelu_approximation": "tanh", "qkv_bias": True},
        resolution=grid * patch, in_channels=in_channels, input_norm="inception", params=params, notes=tuple(notes),
    )
