"""The JAX trainer's recipe in an ordinary PyTorch loop: AdamW, warm-up + cosine, label smoothing, clipping.

Written as a careful PyTorch user would (fused AdamW, autocast on GPU: bf16, or fp16 with `torch.amp.GradScaler`
on GPUs without fast bf16; `clip_grad_norm_`), with the choices that make it the *same* recipe as the Optax one,
so one step from the same state gives the same update:
- `torch.optim.AdamW` equals `optax.adamw`: eps added to sqrt(v_hat), bias correction on both moments,
  decoupled weight decay multiplied by the learning rate, applied to the pre-step parameters.
- Weight decay only on the kernels of dense and conv layers, never on biases, LayerNorm scales, the
  position embedding or the CLS token (the same mask the Optax recipe uses).
- The learning rate follows `optax.warmup_cosine_decay_schedule` exactly, step 0 included (`lr_at_step`).
- `F.cross_entropy(label_smoothing=s)` equals cross-entropy against one-hot targets smoothed by s/K.
- `clip_grad_norm_` equals `optax.clip_by_global_norm` up to its 1e-6 guard in the denominator.
- The compute dtype follows the JAX rule (`jax_vit.precision.select_precision`, fed with torch's view of the
  GPU). In float16 the GradScaler starts and grows as the JAX step's loss scale does (2**15, doubling after 2000
  finite steps, halving on an overflow, whose update it skips). One difference: the learning rate here follows
  iterations, PyTorch's usual `scheduler.step()` every step, while optax's follows applied updates; they part
  by one step per skipped overflow.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jax_vit.configs import Config
from jax_vit.precision import GROWTH_INTERVAL, INITIAL_LOSS_SCALE, Precision, select_precision

# Parameters that a transformer recipe never decays even though they are not 1-D.
NO_DECAY_NAMES = frozenset({"cls_token", "pos_embed"})


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up from `init_value` to `peak_value`, then cosine decay to `end_value` at `total_steps`."""

    init_value: float
    peak_value: float
    warmup_steps: int
    total_steps: int
    end_value: float

    @classmethod
    def from_config(cls, config: Config, steps_per_epoch: int, init_value: float = 0.0) -> "Schedule":
        total = max(int(config.epochs * steps_per_epoch), 1)
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
        return cls(init_value, config.learning_rate, warmup, total, config.min_learning_rate)

    def lr_at_step(self, step: int) -> float:
        """`optax.warmup_cosine_decay_schedule(...)(step)`, in plain Python."""
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return self.init_value + (self.peak_value - self.init_value) * fraction
        decay_steps = self.total_steps - self.warmup_steps
        t = min(step - self.warmup_steps, decay_steps)
        alpha = 0.0 if self.peak_value == 0.0 else self.end_value / self.peak_value
        cosine = 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))
        return self.peak_value * ((1.0 - alpha) * cosine + alpha)


def decays(name: str, param: torch.Tensor) -> bool:
    return param.ndim >= 2 and name not in NO_DECAY_NAMES


def make_optimizer(model: nn.Module, config: Config, schedule: Schedule) -> tuple[torch.optim.Optimizer, object]:
    """Fused AdamW with the weight-decay mask, and a LambdaLR that follows `schedule` step by step."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if decays(name, param) else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.b1, config.b2), eps=1e-8, fused=True,
    )
    peak = schedule.peak_value or 1.0
    # LambdaLR applies the factor for step k before the k-th optimizer step, as Optax's schedule does.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.lr_at_step(step) / peak)
    return optimizer, scheduler


AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_precision(device: torch.device, compute_dtype: str = "auto") -> Precision:
    """The JAX trainer's choice for `compute_dtype` on this torch device (a CUDA GPU's compute capability and
    name come from torch)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return select_precision(compute_dtype, "gpu", f"{major}.{minor}", torch.cuda.get_device_name(device))
    return select_precision(compute_dtype, device.type)


def autocast_dtype(device: torch.device, compute_dtype: str = "auto") -> torch.dtype | None:
    """The Flax model's compute dtype as an autocast dtype (None: float32, no autocast): "auto" follows the
    device as in JAX; "float32" / "bfloat16" / "float16" are that everywhere, as `--set compute_dtype=...`."""
    return AUTOCAST_DTYPES[torch_precision(device, compute_dtype).dtype]


def autocast(device: torch.device, compute_dtype: str = "auto"):
    dtype = autocast_dtype(device, compute_dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, compute_dtype: str = "auto") -> torch.amp.GradScaler | None:
    """A GradScaler where the compute dtype is float16 (bf16 has float32's range and needs none), else None."""
    if autocast_dtype(device, compute_dtype) != torch.float16:
        return None
    return torch.amp.GradScaler(device.type, init_scale=INITIAL_LOSS_SCALE, growth_interval=GROWTH_INTERVAL)


def apply_gradients(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    parameters, clip_norm: float) -> None:
    """Backward, clip at `clip_norm` (0: not at all), optimizer step; through `scaler` when there is one: the loss
    scaled, the gradients unscaled before clipping (as the JAX step clips the true gradients), the step skipped
    when a gradient is inf/NaN and the scale lowered."""
    optimizer.zero_grad(set_to_none=True)
    parameters = list(parameters)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if clip_norm > 0:
        nn.utils.clip_grad_norm_(parameters, clip_norm, foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


class TorchTrainStep:
    """One training step: forward under autocast, smoothed cross-entropy, backward, clip, AdamW, schedule.

    `model` may be a `torch.compile`d module; the optimizer holds the original parameters either way.
    Returns the loss as a tensor, so a timed loop does not synchronise with the device on every step.
    """

    def __init__(self, model: nn.Module, config: Config, schedule: Schedule, device: torch.device):
        self.model = model
        self.config = config
        self.device = device
        self.optimizer, self.scheduler = make_optimizer(model, config, schedule)
        self.scaler = make_grad_scaler(device, config.compute_dtype)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.train()
        with autocast(self.device, self.config.compute_dtype):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        apply_gradients(loss, self.optimizer, self.scaler, self.model.parameters(), self.config.grad_clip_norm)
        self.scheduler.step()
        return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
