"""Model FLOPs per image, counted from the architecture, and model FLOPs utilisation (MFU).

Counts the matrix multiplications only (2 FLOPs per multiply-add), as MFU is conventionally defined
(PaLM, appendix B): patch embedding, QKV, the two attention products, the output projection, the MLP and
the head. LayerNorm, softmax, GELU and the optimizer are left out: XLA's own cost analysis of the forward
pass, which counts them, comes out 3% (seed-384x8) to 9% (tiny) higher.
A training step costs 3x the forward pass (the backward pass computes gradients for both activations and
weights). Recomputation is not counted: "model" FLOPs, not hardware FLOPs.
"""
from __future__ import annotations

from jax_vit.configs import Config

# Dense (no 2:4 sparsity) bfloat16 tensor-core peaks, FLOP/s, from the vendors' data sheets. Matched in order
# against the lower-cased device name, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989.4e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("h200", 989.4e12),
    ("a100", 312e12),
)


def forward_flops_per_image(config: Config) -> int:
    tokens = config.num_patches + 1  # CLS token included
    width, mlp = config.width, config.mlp_dim
    patch_embed = 2 * config.num_patches * (config.patch_size**2 * config.in_channels) * width
    qkv = 2 * tokens * width * 3 * width
    attention = 2 * (2 * tokens * tokens * width)  # q k^T and weights @ v, summed over heads
    projection = 2 * tokens * width * width
    mlp_flops = 2 * (2 * tokens * width * mlp)
    head = 2 * width * config.num_classes
    return patch_embed + config.depth * (qkv + attention + projection + mlp_flops) + head


def train_flops_per_image(config: Config) -> int:
    return 3 * forward_flops_per_image(config)


def peak_flops(device_name: str | None) -> float | None:
    """The device's bf16 dense peak in FLOP/s, or None where unknown (CPUs, unlisted GPUs)."""
    name = (device_name or "").lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def mfu(config: Config, images_per_s: float | None, device_name: str | None) -> float | None:
    """Achieved training model FLOP/s over the device's peak (0..1), or None where the peak is unknown."""
    peak = peak_flops(device_name)
    if peak is None or not images_per_s:
        return None
    return train_flops_per_image(config) * images_per_s / peak
