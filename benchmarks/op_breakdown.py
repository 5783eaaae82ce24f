"""Per-operation timings of one encoder block, JAX against PyTorch: which piece of a CPU step is slower.

    python -m benchmarks.op_breakdown --config seed-256x6 --batch-size 128 [--repeats 7]

Each row times one piece of the block at the config's shapes (batch x tokens rows), forward and backward
together (gradients with respect to its input and its parameters, against a fixed random cotangent), in
float32: LayerNorm, the QKV, output, fc1 and fc2 matmuls with their biases, the attention core, exact GELU
(the model's and PyTorch's formulas), and dropout. The JAX side calls the model's own code where it has one
(`jax_vit.model.gelu`, `attention_core`, `keep_mask`), the PyTorch side what `benchmarks/torch_vit.py` calls. Medians of
interleaved repetitions; prints a table only. `benchmarks/breakdown.py` splits the whole step instead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

if __name__ == "__main__":  # the same allocator as scripts/benchmark.py (see jax_vit/allocator.py)
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as scripts/benchmark.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.breakdown import step_timer  # noqa: E402
from benchmarks.torch_vit import LAYER_NORM_EPS  # noqa: E402
from jax_vit.configs import get_config, parse_overrides  # noqa: E402
from jax_vit.model import attention_core, gelu, keep_mask  # noqa: E402


def _jax_ops(config, rows: int, rng: np.random.Generator) -> dict:
    """name -> (jitted fn, args): each fn returns the gradients of <piece(x, params), cotangent>."""
    width, mlp, heads, tokens = config.width, config.mlp_dim, config.num_heads, config.num_patches + 1
    batch = rows // tokens

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))

    def vjp(piece, *args):
        out, pullback = jax.vjp(piece, *args)
        return pullback(jnp.ones_like(out) * 0.5)

    def layer_norm(x, scale, bias):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale + bias

    def dense(x, kernel, bias):
        return x @ kernel + bias

    def attention(q, k, v):
        return attention_core(q, k, v)

    key = jax.random.key(0)

    def dropout(x):
        mask, keep = keep_mask(key, 1.0 - max(config.dropout, 0.1), x.shape)
        return jnp.where(mask, x / keep, 0.0)

    head = (batch, tokens, heads, width // heads)
    ops = {
        "layernorm": (layer_norm, normal(rows, width), normal(width), normal(width)),
        "qkv matmul": (dense, normal(rows, width), normal(width, 3 * width), normal(3 * width)),
        "attention core": (attention, normal(*head), normal(*head), normal(*head)),
        "proj matmul": (dense, normal(rows, width), normal(width, width), normal(width)),
        "fc1 matmul": (dense, normal(rows, width), normal(width, mlp), normal(mlp)),
        "gelu (model)": (lambda x: gelu(x), normal(rows, mlp)),
        "gelu (jax.nn erfc)": (lambda x: jax.nn.gelu(x, approximate=False), normal(rows, mlp)),
        "fc2 matmul": (dense, normal(rows, mlp), normal(mlp, width), normal(width)),
        "dropout (mlp)": (dropout, normal(rows, mlp)),
    }
    return {name: (jax.jit(lambda *a, piece=piece: vjp(piece, *a)), args) for name, (piece, *args) in ops.items()}


def _torch_ops(config, rows: int, rng: np.random.Generator) -> dict:
    width, mlp, heads, tokens = config.width, config.mlp_dim, config.num_heads, config.num_patches + 1
    batch = rows // tokens

    def normal(*shape):
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).requires_grad_(True)

    def dense(x, weight, bias):
        return F.linear(x, weight, bias)

    head = (batch, heads, tokens, width // heads)
    ops = {
        "layernorm": (lambda x, w, b: F.layer_norm(x, (width,), w, b, LAYER_NORM_EPS),
                      normal(rows, width), normal(width), normal(width)),
        "qkv matmul": (dense, normal(rows, width), normal(3 * width, width), normal(3 * width)),
        "attention core": (F.scaled_dot_product_attention, normal(*head), normal(*head), normal(*head)),
        "proj matmul": (dense, normal(rows, width), normal(width, width), normal(width)),
        "fc1 matmul": (dense, normal(rows, width), normal(mlp, width), normal(mlp)),
        "gelu (model)": (F.gelu, normal(rows, mlp)),
        "fc2 matmul": (dense, normal(rows, mlp), normal(width, mlp), normal(width)),
        "dropout (mlp)": (lambda x: F.dropout(x, max(config.dropout, 0.1), training=True), normal(rows, mlp)),
    }

    def run(piece, args):
        out = piece(*args)
        return torch.autograd.grad(out, args, torch.full_like(out, 0.5))

    return {name: (run, (piece, args)) for name, (piece, *args) in ops.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="seed-256x6")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    config = get_config(args.config, parse_overrides(args.set))
    rows = args.batch_size * (config.num_patches + 1)
    jax_ops = _jax_ops(config, rows, np.random.default_rng(0))
    torch_ops = _torch_ops(config, rows, np.random.default_rng(0))
    runs = {("jax", name): step_timer(lambda fn=fn, a=a: fn(*a), jax.block_until_ready, args.steps)
            for name, (fn, a) in jax_ops.items()}
    runs.update({("torch", name): step_timer(lambda fn=fn, a=a: fn(*a), lambda out: None, args.steps)
                 for name, (fn, a) in torch_ops.items()})
    times = {key: [] for key in runs}
    for run in runs.values():
        run()  # compile / warm up
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(1e3 * run())
    print(f"{args.config}: {rows} rows (batch {args.batch_size}), forward+backward, float32, "
          f"{torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.2f}; "
          f"median ms over {args.repeats} x {args.steps}")
    for name in jax_ops:
        j = statistics.median(times[("jax", name)])
        line = f"{name:20s} jax {j:8.2f}"
        if ("torch", name) in times:
            t = statistics.median(times[("torch", name)])
            line += f"  torch {t:8.2f}  jax/torch time {j / t:6.3g}"
        print(line)


if __name__ == "__main__":
    main()
