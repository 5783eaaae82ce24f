"""The Vision Transformer, from scratch in Flax NNX.

Reads top to bottom like the paper: patchify with a strided conv, prepend a CLS token, add learnable
position embeddings, run pre-norm encoder blocks, classify from the CLS output.

The model holds parameters only (no RNG state): dropout and DropPath draw from `rngs` passed at call time,
so the train step can give every device its own key and stay a pure function of (params, batch, key).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_vit.configs import Config, ConfigError
from jax_vit.precision import device_precision, select_precision

# Glorot-uniform for dense kernels and small normals for embeddings follow the original ViT code.
dense_init = nnx.initializers.xavier_uniform()
embed_init = nnx.initializers.normal(stddev=0.02)


def compute_dtype(config: Config, platform: str | None = None, compute_capability=None) -> jnp.dtype:
    """What `config.compute_dtype` means on `platform` with a GPU of `compute_capability` (by default: on this
    process's first device). "auto" follows `jax_vit.precision.select_precision`: bfloat16 on TPUs and on NVIDIA
    GPUs from Ampere on, float16 (with loss scaling in the train step) on V100/T4/P100, float32 on the CPU."""
    if platform is None:
        return jnp.dtype(device_precision(config.compute_dtype).dtype)
    return jnp.dtype(select_precision(config.compute_dtype, platform, compute_capability).dtype)


def check_attention(config: Config, dtype, platform: str | None = None) -> None:
    """ConfigError unless `config.attention` can run here: cuDNN's fused kernel takes only 16-bit inputs on an
    NVIDIA GPU, with a head dim that is a multiple of 8 (otherwise jax fails deep inside the first step)."""
    if config.attention != "cudnn":
        return
    platform = platform or jax.default_backend()
    head_dim = config.width // config.num_heads
    if platform != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16) or head_dim % 8:
        raise ConfigError(f"attention=cudnn needs an NVIDIA GPU, 16-bit compute (bfloat16 or float16) and a head "
                          f"dim divisible by 8 "
                          f"(here: {platform}, {jnp.dtype(dtype).name}, width/num_heads={head_dim}): "
                          f"use attention=xla")


class _InvertedDrop(nnx.Module):
    """Zero the elements a mask drops and scale the rest by 1/keep, so the expectation is unchanged."""

    def __init__(self, rate: float):
        self.rate = rate

    def mask(self, key: jax.Array, x: jax.Array) -> tuple[jax.Array, float]:
        raise NotImplementedError

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        mask, keep = self.mask(rngs.dropout(), x)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class DropPath(_InvertedDrop):
    """Stochastic depth: drop a sample's whole residual branch with probability `rate`."""

    def mask(self, key, x):
        # One draw per sample: jax.random.bernoulli's cost does not matter here, and it keeps recorded runs
        # bit-reproducible.
        keep = 1.0 - self.rate
        return jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1)), keep


def keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """A Bernoulli(keep_prob) mask drawn from 16 random bits an element, two elements to each 32-bit word.

    `jax.random.bernoulli` spends a whole threefry word on every element (partitionable threefry, JAX's
    default, does so for any bit width). With dropout on every MLP activation that was a quarter of
    seed-256x6's training step on the CPU; drawing half the words took the step from about 1630 to 1360 ms
    (README, "Speed: JAX vs PyTorch"). 16 bits resolve keep_prob to 1/65536: the mask and the returned,
    rounded keep probability go together, so rescaling by it keeps the expectation exact (in float32; bfloat16
    compute rounds 1/keep itself, by at most 0.2%).
    """
    threshold = min(max(round(keep_prob * 65536), 1), 65535)
    size = int(np.prod(shape))
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:size].reshape(shape)
    return halves < jnp.uint16(threshold), threshold / 65536


class Dropout(_InvertedDrop):
    """Inverted dropout with masks from `keep_mask` (nnx.Dropout draws a 32-bit word per element)."""

    def mask(self, key, x):
        return keep_mask(key, 1.0 - self.rate, x.shape)


# Abramowitz & Stegun 7.1.26: erfc(z) ~ t (a1 + a2 t + ... + a5 t^4) exp(-z^2), t = 1 / (1 + p z), z >= 0,
# absolute error below 1.5e-7; PyTorch's vectorised CPU erf uses the same formula.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _normal_cdf_and_gauss(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Phi(x) and exp(-x^2/2). Phi(-|x|) = erfc(|x|/sqrt 2)/2 comes straight from the formula, so the negative
    side has no 1 + erf cancellation."""
    t = 1.0 / (1.0 + _AS_P * _SQRT_HALF * jnp.abs(x))
    a1, a2, a3, a4, a5 = _AS_A
    gauss = jnp.exp(-0.5 * x * x)
    tail = 0.5 * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * gauss
    return jnp.where(x >= 0, 1.0 - tail, tail), gauss


@jax.custom_vjp
def _exact_gelu(x: jax.Array) -> jax.Array:
    return x * _normal_cdf_and_gauss(x)[0]


def _exact_gelu_fwd(x):
    # Only the input is kept for the backward, which recomputes Phi and exp from it. A JVP rule (or autodiff)
    # keeps what the forward computed, and XLA:CPU writes those intermediates out as two more arrays of the
    # MLP's widest activation and reads them back: about 2 % of a seed-384x8 step on an AMX Xeon
    # (docs/speed.md, "GELU and the attention core"). A VJP rule has no forward mode (jax.jvp), which
    # nothing here uses.
    return _exact_gelu(x), x


def _exact_gelu_bwd(x, g):
    # The exact derivative Phi(x) + x phi(x) (autodiff of the formula would differentiate its approximation
    # error as well), behind a barrier: without it XLA merges the recomputation with the forward's own Phi
    # and exp, and the intermediates are written out again.
    x, g = jax.lax.optimization_barrier((x, g))
    cdf, gauss = _normal_cdf_and_gauss(x)
    return ((cdf + _INV_SQRT_2PI * x * gauss) * g,)


_exact_gelu.defvjp(_exact_gelu_fwd, _exact_gelu_bwd)


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU x Phi(x), exact (erf) by default, or the tanh approximation (`jax.nn.gelu`'s).

    `jax.nn.gelu(approximate=False)` lowers to XLA's erfc, which is slow on XLA:CPU: over seed-256x6's MLP
    activations on a 2-core AMD EPYC it took 7.1 ms forward and 7.5 ms forward+backward, against 4.1 and 4.1 ms
    here (docs/speed.md). Accuracy against float64 over [-10, 10]: at most 4.2e-7 absolute, gradient 2.5e-7
    (jax.nn.gelu: 3.8e-7 and 1.4e-7; PyTorch's float32 F.gelu: 3.8e-7 and 2.6e-7), tested in
    tests/test_jax_vit_model.py.
    """
    if approximate:
        return jax.nn.gelu(x, approximate=True)
    return _exact_gelu(x)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm over the last axis, statistics in (at least) float32, two-pass variance; float32 result."""
    return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_stats(x, epsilon):
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(-1, keepdims=True)
    return x, mean, jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + epsilon)


def _layer_norm_fwd(x, scale, bias, epsilon):
    x32, mean, rstd = _layer_norm_stats(x, epsilon)
    return (x32 - mean) * rstd * scale + bias, (x, mean, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, g):
    # The textbook backward from the input and the two per-row statistics, behind a barrier so that XLA does
    # not share the normalised input with the forward. Autodiff of the formula (flax's nnx.LayerNorm) runs as
    # more passes over the residual stream and materialises broadcasts of the statistics: about 3 % of the
    # seed steps on an AMX Xeon (docs/speed.md, "The weight gradients without transposed copies").
    x, mean, rstd, scale, g = jax.lax.optimization_barrier((*residuals, g))
    x_hat = (x.astype(mean.dtype) - mean) * rstd
    g = g.astype(mean.dtype)
    rows = tuple(range(g.ndim - 1))
    g_hat = g * scale
    dx = rstd * (g_hat - g_hat.mean(-1, keepdims=True) - x_hat * (g_hat * x_hat).mean(-1, keepdims=True))
    return dx.astype(x.dtype), (g * x_hat).sum(rows), g.sum(rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.Module):
    """nnx.LayerNorm's parameters (`scale`, `bias`, float32) and result dtype, with `layer_norm`'s backward."""

    def __init__(self, features: int, *, epsilon: float, dtype):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon).astype(self.dtype)


@jax.custom_vjp
def split_qkv(qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[batch, tokens, 3, heads, head_dim] -> q, k, v. The same slices as `qkv[:, :, i]`, with a backward that
    stacks the three cotangents into one array: autodiff of the slices pads each cotangent with zeros to the
    full QKV shape and adds the three, which XLA:CPU runs as four full-size passes, one more to lay the sum
    out for the weight gradient (about 7 % of a seed-384x8 step's CPU time on an AMX Xeon, docs/speed.md)."""
    return _qkv_slices(qkv)


def _qkv_slices(qkv):
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _split_qkv_fwd(qkv):
    return _qkv_slices(qkv), None


def _split_qkv_bwd(_, cotangents):
    return (jnp.stack(cotangents, axis=2),)


split_qkv.defvjp(_split_qkv_fwd, _split_qkv_bwd)


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, kernel):
    return _matmul(x, kernel), (x, kernel)


def _matmul_bwd(residuals, g):
    # The weight gradient contracts the rows of the two 2-D views ([rows, in] and [rows, out], bitcasts), a
    # transposed-operand GEMM that XLA:CPU's dot runs as it is. Autodiff contracts the leading axes of the 3-D
    # arrays instead, and XLA:CPU then writes the output gradient out transposed ([out, rows]) for the weight
    # gradient of every dense layer: four copies a block, 8-15 % of the seed steps on an AMX Xeon
    # (docs/speed.md, "The weight gradients without transposed copies").
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    dk = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return dx, dk


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """`nnx.Linear`'s `dot_general`: the dense contraction (x's last axis with the kernel's first) goes through
    `_matmul`'s VJP, the same products as `jax.lax.dot_general`; any other call is passed on to it."""
    plain = precision is None and preferred_element_type is None and kwargs.get("out_sharding") is None
    if not plain or kernel.ndim != 2 or dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
        return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kwargs)
    return _matmul(x, kernel)


def dense(in_features: int, out_features: int, **kwargs) -> nnx.Linear:
    """`nnx.Linear` (its parameters, initialisers and dtype rules) with `dense_dot_general`."""
    return nnx.Linear(in_features, out_features, dot_general=dense_dot_general, **kwargs)


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, weights_dropout=None) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v for q, k, v of [batch, tokens, heads, head_dim], spelled out in two
    einsums: the same computation as `jax.nn.dot_product_attention(implementation="xla")`, whose einsums run
    on a 5-D grouped-query layout (heads split into groups of one) that XLA:CPU lays out with more transposed
    copies; this form made the whole train step 3-5 % faster on an AMX Xeon (docs/speed.md, "GELU and the
    attention core"). The logits and the softmax are float32, as in jax's own path (q.k can pass float16's
    65504); `weights_dropout` applies dropout to the attention weights, which no fused kernel has.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / float(np.sqrt(q.shape[-1]))
    weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    if weights_dropout is not None:
        weights = weights_dropout(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MultiHeadSelfAttention(nnx.Module):
    """Fused QKV projection and scaled dot-product attention.

    `config.attention` picks its implementation: "xla" (`attention_core`, any device) or "cudnn", the fused
    flash kernel that PyTorch's `scaled_dot_product_attention` picks by itself on a GPU, through
    `jax.nn.dot_product_attention`.
    """

    def __init__(self, config: Config, *, dtype, rngs: nnx.Rngs):
        self.num_heads = config.num_heads
        self.implementation = config.attention
        self.qkv = dense(config.width, 3 * config.width, use_bias=config.qkv_bias, kernel_init=dense_init,
                         dtype=dtype, rngs=rngs)
        self.proj = dense(config.width, config.width, kernel_init=dense_init, dtype=dtype, rngs=rngs)
        self.attention_dropout = Dropout(config.attention_dropout)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        batch, tokens, width = x.shape
        q, k, v = split_qkv(self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads))
        # cuDNN's kernel has no dropout on the attention weights: with it, even a "cudnn" model attends here.
        if self.implementation == "xla" or (train and self.attention_dropout.rate > 0.0):
            out = attention_core(q, k, v, lambda w: self.attention_dropout(w, train=train, rngs=rngs))
        else:
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        return self.proj(out.reshape(batch, tokens, width))


class MlpBlock(nnx.Module):
    def __init__(self, config: Config, *, dtype, rngs: nnx.Rngs):
        self.fc1 = dense(config.width, config.mlp_dim, kernel_init=dense_init, dtype=dtype, rngs=rngs)
        self.fc2 = dense(config.mlp_dim, config.width, kernel_init=dense_init, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config.dropout)
        self.approximate_gelu = config.gelu_approximation == "tanh"

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        # Exact (erf) GELU by default, as in PyTorch, timm and Hugging Face, so the baseline computes the same;
        # the tanh form for checkpoints trained with it (the ViT authors' Flax code).
        x = gelu(self.fc1(x), approximate=self.approximate_gelu)
        x = self.dropout(x, train=train, rngs=rngs)
        return self.dropout(self.fc2(x), train=train, rngs=rngs)


class EncoderBlock(nnx.Module):
    """Pre-norm: x + DropPath(MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, config: Config, drop_path_rate: float, *, dtype, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(config.width, epsilon=config.layer_norm_epsilon, dtype=dtype)
        self.attention = MultiHeadSelfAttention(config, dtype=dtype, rngs=rngs)
        self.norm2 = LayerNorm(config.width, epsilon=config.layer_norm_epsilon, dtype=dtype)
        self.mlp = MlpBlock(config, dtype=dtype, rngs=rngs)
        self.drop_path = DropPath(drop_path_rate)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        x = x + self.drop_path(self.attention(self.norm1(x), train=train, rngs=rngs), train=train, rngs=rngs)
        return x + self.drop_path(self.mlp(self.norm2(x), train=train, rngs=rngs), train=train, rngs=rngs)


class VisionTransformer(nnx.Module):
    def __init__(self, config: Config, *, rngs: nnx.Rngs, dtype=None):
        dtype = dtype if dtype is not None else compute_dtype(config)
        check_attention(config, dtype)
        p, width = config.patch_size, config.width
        self.patch_embed = nnx.Conv(
            config.in_channels, width, kernel_size=(p, p), strides=(p, p), padding="VALID",
            kernel_init=dense_init, dtype=dtype, rngs=rngs,
        )
        self.cls_token = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
        self.pos_embed = nnx.Param(embed_init(rngs.params(), (1, config.num_patches + 1, width), jnp.float32))
        self.dropout = Dropout(config.dropout)
        rates = np.linspace(0.0, config.drop_path_rate, config.depth)
        self.blocks = nnx.List([EncoderBlock(config, float(r), dtype=dtype, rngs=rngs) for r in rates])
        self.norm = LayerNorm(width, epsilon=config.layer_norm_epsilon, dtype=dtype)
        # A zero-initialised head starts every class at the same logit (as in big_vision).
        self.head = dense(width, config.num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.dtype = dtype

    def __call__(self, images: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """images: (batch, height, width, channels), normalised floats. Returns float32 logits."""
        x = self.patch_embed(images.astype(self.dtype))
        batch, h, w, width = x.shape
        x = x.reshape(batch, h * w, width)
        cls = jnp.broadcast_to(self.cls_token.value, (batch, 1, width)).astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.value.astype(x.dtype)
        x = self.dropout(x, train=train, rngs=rngs)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        x = self.norm(x)
        return self.head(x[:, 0].astype(jnp.float32))


def count_params(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
