"""What the ViT computes in on this device, and float16's dynamic loss scaling.

`select_precision` is the one rule, a pure function of the requested `compute_dtype`, the platform and the GPU's
compute capability, so every GPU generation is testable on a CPU. Parameters and optimiser state stay float32
whatever it picks; only the matmuls, convolutions and activations drop to 16 bits.

float16 has 5 exponent bits (largest value 65504, smallest normal 6e-5), so small gradients underflow to zero
and large ones overflow to inf. Dynamic loss scaling (Micikevicius et al., "Mixed Precision Training", 2018;
what `torch.amp.GradScaler` does) multiplies the loss by a power of two before differentiating, divides the
float32 gradients by it after, skips an update whose gradients are not finite and halves the scale then, and
doubles it after `GROWTH_INTERVAL` finite steps in a row. DeepMind's `jmp` has the same (`DynamicLossScale`),
but its last release is 0.0.4 from January 2023 and it is not a dependency here; optax has none. The few lines
below are the whole of it.
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")
# PyTorch's GradScaler starts at 2**16 and grows every 2000 steps. We start one power lower (as jmp's examples
# do): a start that is too high costs one skipped step per halving, so it matters little. The scale never
# drops below 1, where it would shrink gradients instead of lifting them out of float16's underflow.
INITIAL_LOSS_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 2000
MIN_LOSS_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class Precision:
    """The compute dtype chosen for a run and why (logged once, written to run.json and summary.json)."""

    dtype: str  # one of DTYPES
    reason: str

    @property
    def loss_scaling(self) -> bool:
        return self.dtype == "float16"

    def describe(self) -> str:
        scaling = " with dynamic loss scaling" if self.loss_scaling else ""
        return f"compute dtype {self.dtype}{scaling} (float32 parameters): {self.reason}"

    def to_dict(self) -> dict:
        return {"compute_dtype": self.dtype, "loss_scaling": self.loss_scaling, "reason": self.reason}


def parse_compute_capability(value) -> tuple[int, int] | None:
    """"7.5" -> (7, 5); None for what is not an NVIDIA "major.minor" (ROCm reports a gfx name, e.g. "gfx90a")."""
    try:
        major, minor = str(value).split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def select_precision(requested: str, platform: str, compute_capability=None, device_kind: str = "") -> Precision:
    """The compute dtype for `requested` ("auto" or one of DTYPES) on `platform` ("cpu", "gpu", "tpu", ...).

    `compute_capability` is what `jax.Device.compute_capability` says on a GPU ("8.0" on an A100); `device_kind`
    only makes the reason readable. "auto": bfloat16 where the hardware has fast bfloat16 (TPUs, NVIDIA sm_80
    and newer), float16 with loss scaling on NVIDIA GPUs with fast float16 but no fast bfloat16 (sm_60, sm_70,
    sm_75), float32 elsewhere on CUDA and on the CPU, bfloat16 on a GPU that reports no CUDA capability (ROCm).
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"compute_dtype={requested!r}: use auto or one of {', '.join(DTYPES)}")
        return Precision(requested, f"compute_dtype={requested} was set")
    if platform == "tpu":
        return Precision("bfloat16", f"{device_kind or 'TPU'}: bfloat16 is the MXU's native input")
    if platform == "cpu":
        return Precision("float32", "CPU: 16-bit compute is for GPU tensor cores and TPU MXUs")
    if platform != "gpu":
        return Precision("float32", f"platform {platform!r} is not one this rule knows: the safe default")
    gpu = device_kind or "this GPU"
    capability = parse_compute_capability(compute_capability)
    if capability is None:
        # ROCm (or a device that says nothing): bfloat16 runs on every GPU XLA supports and needs no loss scaling;
        # AMD Instinct MI100 and newer have bfloat16 matrix units. Older GPUs: set compute_dtype explicitly.
        return Precision("bfloat16", f"{gpu} reports no CUDA compute capability ({compute_capability!r}): "
                                     f"bfloat16, the default for GPUs other than NVIDIA's")
    sm = f"sm_{capability[0]}{capability[1]}"
    if capability >= (8, 0):
        return Precision("bfloat16", f"{gpu} ({sm}, Ampere or newer) has bfloat16 tensor cores: float32's range, "
                                     f"no loss scaling")
    if capability >= (7, 0) or capability == (6, 0):
        return Precision("float16", f"{gpu} ({sm}) has fast float16 but no fast bfloat16 (that needs sm_80)")
    # Pascal's sm_61/62 (P40, P4, GTX 10xx) run float16 arithmetic at a small fraction of float32's rate.
    return Precision("float32", f"{gpu} ({sm}) has neither fast bfloat16 nor fast float16")


def device_precision(requested: str, device=None) -> Precision:
    """`select_precision` for `device` (default: the first local device), read off its jax.Device."""
    device = device if device is not None else jax.local_devices()[0]
    capability = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
    return select_precision(requested, device.platform, capability, getattr(device, "device_kind", ""))


# --- dynamic loss scaling --------------------------------------------------------------------------------

@flax.struct.dataclass
class DynamicLossScale:
    """Part of the train state (checkpointed with it), so a resumed float16 run keeps its scale."""

    scale: jax.Array  # float32 scalar, a power of two
    good_steps: jax.Array  # int32 scalar: finite steps in a row since the scale last changed

    @classmethod
    def create(cls, scale: float = INITIAL_LOSS_SCALE) -> "DynamicLossScale":
        return cls(scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32))

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale

    def unscale(self, grads):
        inverse = 1.0 / self.scale
        return jax.tree.map(lambda g: g.astype(jnp.float32) * inverse, grads)

    def adjust(self, grads_finite: jax.Array) -> "DynamicLossScale":
        """Halve on an overflow (not below MIN_LOSS_SCALE) and start counting again; double after
        GROWTH_INTERVAL finite steps in a row."""
        grow = self.good_steps + 1 >= GROWTH_INTERVAL
        scale = jnp.where(grads_finite, jnp.where(grow, self.scale * 2.0, self.scale),
                          jnp.maximum(self.scale * 0.5, MIN_LOSS_SCALE))
        good_steps = jnp.where(grads_finite & ~grow, self.good_steps + 1, 0)
        return DynamicLossScale(scale=scale.astype(jnp.float32), good_steps=good_steps.astype(jnp.int32))


def all_finite(tree) -> jax.Array:
    """True when every element of every leaf is finite (a bool scalar)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def select_tree(pred: jax.Array, on_true, on_false):
    """`on_true` where the scalar `pred` holds, else `on_false`, leaf by leaf (None subtrees stay None)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
