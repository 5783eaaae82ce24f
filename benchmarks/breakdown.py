"""Where a training step's time goes, per framework: the profile behind the speed comparison.

    python -m benchmarks.breakdown --config tiny --batch-size 128 [--repeats 5]

Times, interleaved and as medians (ms per step, one fixed in-memory batch):
- `forward`: the model alone, training mode off;
- `forward+backward`: loss and gradients, no optimizer, no augmentation;
- `full step`: JAX's production step (augmentation, clipping, AdamW, schedule included) and PyTorch's
  `TorchTrainStep` (clipping, fused AdamW, schedule).
The gaps say which part (model, optimizer/augmentation, dispatch) explains a difference between the
frameworks. Uses the same runners as `scripts/benchmark.py`; prints a table only. Meant for the CPU
(forward and forward+backward run in float32 there; on a GPU they would skip the bf16 autocast).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

if __name__ == "__main__":  # the same allocator as scripts/benchmark.py (see jax_vit/allocator.py)
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as scripts/benchmark.py, see README, "Speed: JAX vs PyTorch"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.runners import JaxRunner, TorchRunner, synthetic_batch  # noqa: E402
from benchmarks.torch_train import synchronize  # noqa: E402
from jax_vit.augment import normalize, smooth_targets  # noqa: E402
from jax_vit.configs import get_config, parse_overrides  # noqa: E402


def step_timer(fn, sync, steps: int):
    """A function that runs `fn` `steps` times after one synchronised call and returns seconds per call."""
    def run() -> float:
        sync(fn())
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        sync(out)
        return (time.perf_counter() - start) / steps
    return run


def jax_parts(runner: JaxRunner, images, labels):
    config, graphdef = runner.config, runner.recipe.graphdef
    # A device copy: host arrays would be transferred again in every timed call, and the train step below
    # donates (frees) the state's own buffers.
    params = jax.tree.map(jnp.copy, runner.state.params)
    inputs = normalize(jnp.asarray(images), config)
    targets = smooth_targets(jnp.asarray(labels), config.num_classes, config.label_smoothing)

    @jax.jit
    def forward(params, inputs):
        return nnx.merge(graphdef, params)(inputs, train=False)

    @jax.jit
    def forward_backward(params, inputs, targets):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(inputs, train=True, rngs=nnx.Rngs(dropout=0))
            return optax.softmax_cross_entropy(logits, targets).mean()
        return jax.value_and_grad(loss_fn)(params)

    def full():
        runner.state, metrics = runner.compiled(runner.state, runner.images, runner.labels)
        return runner.state

    return {
        "forward": lambda: forward(params, inputs),
        "forward+backward": lambda: forward_backward(params, inputs, targets),
        "full step": full,
    }


def torch_parts(runner: TorchRunner):
    model, images, labels = runner.model, runner.images, runner.labels
    smoothing = runner.config.label_smoothing

    def forward():
        model.eval()
        with torch.no_grad():
            return model(images)

    def forward_backward():
        model.train()
        loss = F.cross_entropy(model(images), labels, label_smoothing=smoothing)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    return {"forward": forward, "forward+backward": forward_backward,
            "full step": lambda: runner.train_step(images, labels)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    config = get_config(args.config, parse_overrides(args.set)).replace(batch_size=args.batch_size)
    images, labels = synthetic_batch(config, args.batch_size)
    jax_runner = JaxRunner(config, images, labels)
    jax_runner.first_step()
    torch_runner = TorchRunner(config, images, labels, jax_runner.initial_params(), compile=False, loader_workers=0)

    timers = {}
    for part, fn in jax_parts(jax_runner, images, labels).items():
        timers[("jax", part)] = step_timer(fn, jax.block_until_ready, args.steps)
    for part, fn in torch_parts(torch_runner).items():
        timers[("torch", part)] = step_timer(fn, lambda out: synchronize(torch_runner.device), args.steps)
    times = {key: [] for key in timers}
    for key, run in timers.items():
        run()  # compile / warm up
    for _ in range(args.repeats):
        for key, run in timers.items():
            times[key].append(run())
    print(f"{args.config}, batch {args.batch_size}, {jax.devices()[0].device_kind}, "
          f"load {os.getloadavg()[0]:.2f}; median ms per step over {args.repeats} x {args.steps}")
    for part in ("forward", "forward+backward", "full step"):
        j = 1e3 * statistics.median(times[("jax", part)])
        t = 1e3 * statistics.median(times[("torch", part)])
        print(f"{part:18s} jax {j:8.1f}  torch {t:8.1f}  jax/torch time {j / t:6.3g}")


if __name__ == "__main__":
    main()
