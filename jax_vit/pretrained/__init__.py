"""Pretrained ViT checkpoints loaded into `jax_vit.model.VisionTransformer` (no second model).

    from jax_vit.pretrained import load_pretrained, init_params
    pretrained = load_pretrained("timm/vit_base_patch16_224.augreg_in21k")   # cached; download=True to fetch
    pretrained.architecture   # width, depth, heads, MLP, patch, LayerNorm epsilon, GELU form, QKV bias
    params = init_params(pretrained, config)   # for a config built from it (jax_vit.finetune does this)

Formats (one reader each): timm safetensors (`timm.py`), transformers ViTModel/ViTForImageClassification
folders (`hf.py`), the ViT authors' .npz (`npz.py`), a jax_vit workdir (`run.py`); `hub.py` finds named ones,
`posemb.py` resizes position embeddings. Reading needs no torch: safetensors is read with its NumPy API.
"""
from jax_vit.pretrained.base import ARCHITECTURE_FIELDS, SUPPORTED, Pretrained, PretrainedError
from jax_vit.pretrained.loader import adapt_input_channels, init_params, load_pretrained
from jax_vit.pretrained.posemb import resize_posemb

__all__ = ["ARCHITECTURE_FIELDS", "SUPPORTED", "Pretrained", "PretrainedError", "adapt_input_channels",
           "init_params", "load_pretrained", "resize_posemb"]
