"""The JAX trainer's recipe in an ordinary PyTorch loop: AdamW, warm-up + cosine, label smoothing, clipping.

Written as a careful PyTorch user would (fused AdamW, bf16 autocast on GPU, `clip_grad_norm_`), with the
choices that make it the *same* recipe as the Optax one, so one step from the same state gives the same
update:
- `torch.optim.AdamW` equals `optax.adamw`: eps added to sqrt(v_hat), bias correction on both moments,
  decoupled weight decay multiplied by the learning rate, applied to the pre-step parameters.
- Weight decay only on the kernels of dense and conv layers, never on biases, LayerNorm scales, the
  position embedding or the CLS token (the same mask the Optax recipe uses).
- The learning rate follows `optax.warmup_cosine_decay_schedule` exactly, step 0 included (`lr_at_step`).
- `F.cross_entropy(label_smoothing=s)` equals cross-entropy against one-hot targets smoothed by s/K.
- `clip_grad_norm_` equals `optax.clip_by_global_norm` up to its 1e-6 guard in the denominator.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jax_vit.configs import Config

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


def autocast_dtype(device: torch.device, compute_dtype: str = "auto") -> torch.dtype | None:
    """The Flax model's compute dtype: "auto" is bfloat16 on GPU (tensor cores) and float32 (no autocast) on
    CPU; "float32" / "bfloat16" are that everywhere, as `--set compute_dtype=...` makes them for JAX."""
    if compute_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if compute_dtype == "bfloat16" else None


def autocast(device: torch.device, compute_dtype: str = "auto"):
    dtype = autocast_dtype(device, compute_dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.model.train()
        with autocast(self.device, self.config.compute_dtype):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
