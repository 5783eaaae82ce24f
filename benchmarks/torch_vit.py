"""The PyTorch baseline: the same Vision Transformer as `jax_vit.model`, written as a PyTorch user would.

Every module and parameter is named after its Flax counterpart (`blocks.0.attention.qkv`, ...), so the
weight transfer is a table of layout changes, not a guessing game. Layout differences that matter:
images are NCHW here (NHWC in Flax), Linear weights are (out, in) (Flax kernels are (in, out)).

Architecture, matching the Flax model line for line: strided-conv patch embedding, CLS token, learnable
position embedding, pre-norm blocks (LayerNorm eps 1e-6, fused QKV projection, scaled dot-product
attention, exact-erf GELU MLP), DropPath rising linearly over depth, final LayerNorm, and a zero-initialised
head applied in float32 to the CLS output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jax_vit.configs import Config

LAYER_NORM_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability `rate`."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device).bernoulli_(keep)
        return x * mask.to(x.dtype) / keep


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        # The fused projection's output is laid out (3, heads, head_dim), as in the Flax model.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, tokens, head_dim)
        dropout_p = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MlpBlock(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.gelu(self.fc1(x)))  # PyTorch's default GELU is the exact (erf) one
        return self.dropout(self.fc2(x))


class EncoderBlock(nn.Module):
    """Pre-norm: x + DropPath(MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, config: Config, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.attention = MultiHeadSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.mlp = MlpBlock(config)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        p, width = config.patch_size, config.width
        self.patch_embed = nn.Conv2d(config.in_channels, width, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, width))
        self.dropout = nn.Dropout(config.dropout)
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList([EncoderBlock(config, r) for r in rates])
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(width, config.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The Flax model's initialisers: Glorot-uniform kernels, zero biases, N(0, 0.02) position embedding."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.cls_token)
        nn.init.zeros_(self.head.weight)  # every class starts at the same logit, as in big_vision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (batch, channels, height, width), normalised floats. Returns float32 logits."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (batch, tokens, width), row-major patches
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.dropout(torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        # The head runs in float32 even under bf16 autocast, as the Flax head does.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x[:, 0].float())
