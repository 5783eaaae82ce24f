"""Fine-tuning speed: our JAX step against timm's own ViT (eager and `torch.compile`d), on the same weights.

`run_finetune_benchmark("vit_base_patch16_224", ...)` builds timm's model with random weights (nothing is
downloaded), writes its state dict as safetensors and reads that back through `jax_vit.pretrained`, the path a
user's checkpoint takes, so both sides start from the same weights. Each side then trains one fixed batch:
- JAX: the production step (`jax_vit.train_step.make_train_step`, one device) with the fine-tuning preset's
  recipe (momentum SGD, clipping) on uint8 32x32 images, cropped, flipped and resized to the resolution inside
  the step, as scripts/finetune.py trains;
- timm: `torch.optim.SGD(momentum=0.9)` on the JAX step's learning-rate schedule, with `clip_grad_norm_` and
  cross-entropy, on images already normalised and resized on the device (autocast in the JAX side's compute
  dtype: bf16 on Ampere and newer GPUs, fp16 with a GradScaler on V100/T4).
Rounds are interleaved with a rotating order, as in `benchmarks.speed`, and the report has the same shape, so
`benchmarks.speed.format_table` prints it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmarks.runners import SCHEDULE_STEPS_PER_EPOCH, JaxRunner, TorchTimedRunner, synthetic_batch
from benchmarks.speed import check_comparable, machine_load, precision, report_frame
from benchmarks.torch_train import Schedule, apply_gradients, autocast, make_grad_scaler
from jax_vit.augment import normalize
from jax_vit.configs import FINETUNE_PRESETS, Config, get_config
from jax_vit.pretrained import init_params, load_pretrained
from jax_vit.train_step import create_train_state, total_steps

SCHEMA = "vit-finetune-speed/1"
NUM_CLASSES = 10  # CIFAR-10's: the new head


def _timm():
    from benchmarks.torchvision_compat import import_torchvision

    import_torchvision()  # timm imports torchvision; on the CPU torch build it needs its op schemas first
    import timm

    return timm


def timm_model(architecture: str, resolution: int, seed: int = 0) -> nn.Module:
    """timm's own model with random weights at `resolution` and a zero-initialised CIFAR-10 head (ours is too)."""
    torch.manual_seed(seed)
    model = _timm().create_model(architecture, pretrained=False, num_classes=NUM_CLASSES, img_size=resolution)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def finetune_setup(architecture: str, *, preset: str, overrides: dict[str, Any] | None, batch_size: int,
                   resolution: int) -> tuple[Config, nn.Module, dict]:
    """(config, timm model, our params): timm's weights read back through jax_vit.pretrained."""
    from safetensors.torch import save_file

    model = timm_model(architecture, resolution)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        pretrained = load_pretrained(str(path))
    config = get_config(preset, {**pretrained.architecture, "image_size": 32, "resolution": resolution,
                                 "input_norm": pretrained.input_norm, "num_classes": NUM_CLASSES,
                                 "batch_size": batch_size, **(overrides or {})}, presets=FINETUNE_PRESETS)
    return config, model, init_params(pretrained, config)


class TimmRunner(TorchTimedRunner):
    """timm's ViT trained as a PyTorch user fine-tunes it: SGD with momentum, gradient clipping, cross-entropy."""

    attention = "sdpa"  # timm's Attention calls F.scaled_dot_product_attention (fused_attn)

    def __init__(self, model: nn.Module, config: Config, images: np.ndarray, labels: np.ndarray, *, compile: bool):
        self.config = config
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(self.device).train()
        self.model = torch.compile(model) if compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scaler = make_grad_scaler(self.device, config.compute_dtype)  # float16 only, as the JAX step scales
        # The JAX step's warm-up + cosine, step for step (with SCHEDULE_STEPS_PER_EPOCH, as JaxRunner builds it).
        total = total_steps(config, SCHEDULE_STEPS_PER_EPOCH)
        warmup = min(config.warmup_steps or round(config.warmup_epochs * SCHEDULE_STEPS_PER_EPOCH), total - 1)
        self.schedule = Schedule(0.0, config.learning_rate, warmup, total, config.min_learning_rate)
        self.steps_done = 0
        normalised = torch.from_numpy(np.ascontiguousarray(np.asarray(normalize(images, config)).transpose(0, 3, 1, 2)))
        self.images = F.interpolate(normalised.to(self.device), size=(config.input_size,) * 2, mode="bilinear",
                                    align_corners=False)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)

    def step(self) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at_step(self.steps_done)
        self.steps_done += 1
        with autocast(self.device, self.config.compute_dtype):
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels, label_smoothing=self.config.label_smoothing)
        apply_gradients(loss, self.optimizer, self.scaler, self.model.parameters(), self.config.grad_clip_norm)
        return loss.detach()


def run_finetune_benchmark(architecture: str, *, preset: str = "finetune-sgd", overrides: dict[str, Any] | None = None,
                           frameworks: list[str], batch_size: int, steps: int, repeats: int, warmup_steps: int,
                           resolution: int = 224, progress: bool = True) -> dict[str, Any]:
    """Every figure of the fine-tuning comparison; `frameworks` from jax, jax-cudnn, torch (timm eager),
    torch-compile (timm under torch.compile)."""
    config, model, params = finetune_setup(architecture, preset=preset, overrides=overrides, batch_size=batch_size,
                                           resolution=resolution)
    check_comparable(config, frameworks)
    load_before = machine_load()
    images, labels = synthetic_batch(config, batch_size, seed=config.seed)  # uint8 at the dataset's 32x32
    runners: dict[str, Any] = {}
    for name in frameworks:
        if name in ("jax", "jax-cudnn"):
            runner = JaxRunner(config.replace(attention="cudnn") if name == "jax-cudnn" else config, images, labels)
            runner.state = create_train_state(runner.recipe, runner.mesh, params=params)
        else:
            import copy

            runner = TimmRunner(copy.deepcopy(model), config, images, labels, compile=name == "torch-compile")
        runners[name] = runner
    figures: dict[str, dict[str, Any]] = {name: {"step_seconds": [], "epochs": []} for name in runners}
    for name, runner in runners.items():
        figures[name]["first_step_s"] = runner.first_step()
        figures[name]["warmup_s"] = runner.run(warmup_steps)
    names = list(runners)
    for round_index in tqdm(range(repeats), desc="timed rounds", disable=not progress):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name]["step_seconds"].append(runners[name].run(steps) / steps)
    for name, runner in runners.items():
        figures[name].update(device=runner.device_name, peak_memory_bytes=runner.peak_memory_bytes(),
                             attention=runner.attention, final_loss=runner.last_loss())
        if isinstance(runner, JaxRunner):
            figures[name]["compiled_memory_bytes"] = runner.compiled_memory_bytes
    return {"architecture": architecture, "preset": preset, "config": config, "frameworks": names,
            "batch_size": batch_size, "steps": steps, "repeats": repeats, "warmup_steps": warmup_steps,
            "figures": figures, "load_before": load_before, "load_after": machine_load(),
            "torch_device": "cuda" if torch.cuda.is_available() else "cpu"}


def build_finetune_report(run: dict[str, Any], *, command: str) -> dict[str, Any]:
    """The JSON schema, written in one place (the fields `benchmarks.speed.format_table` reads among them)."""
    import timm

    config: Config = run["config"]
    return report_frame(SCHEMA, run, command, extra_versions={"timm": timm.__version__}, settings={
        "preset": f"{run['architecture']} ({run['preset']})", "timm_architecture": run["architecture"],
        "recipe_preset": run["preset"], "resolution": config.input_size, "batch_size": run["batch_size"],
        "steps_per_repeat": run["steps"], "repeats": run["repeats"], "warmup_steps": run["warmup_steps"],
        "frameworks": run["frameworks"],
        "precision": precision(config, run["torch_device"]),
        "torch_optimizer": f"SGD(momentum={config.momentum}) + clip_grad_norm_({config.grad_clip_norm})",
        "torch_compile_mode": "default",
        "notes": ("Random weights (nothing downloaded), the same on both sides: timm's state dict read back "
                  "through jax_vit.pretrained; the new 10-class head is zero on both. One fixed batch. The JAX "
                  "step is scripts/finetune.py's: uint8 32x32 images in, crop, flip, normalisation and the "
                  "bilinear resize to the resolution inside the step; timm gets the batch normalised and "
                  "resized on the device already. 'torch' is timm's model eager, 'torch-compile' under "
                  "torch.compile."),
    })
