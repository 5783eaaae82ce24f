"""The JAX-vs-PyTorch speed comparison: one process, one device, interleaved repetitions, medians.

`run_benchmark(...)` builds every runner, times its first step (compilation), warms it up, then times
`repeats` rounds of `steps` training steps on one in-memory batch. Within a round the frameworks take
turns and the order rotates each round, so a change in machine load (the CPU is shared) hits all of them
alike. Optionally it then times whole epochs on real data through each side's natural input pipeline.
`build_report` is the one place the JSON schema is written; `format_table` prints it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks import flops
from benchmarks.host import cpu_kind, cpu_model
from benchmarks.runners import JaxRunner, TorchRunner, synthetic_batch
from benchmarks.torch_train import autocast_dtype
from jax_vit.configs import Config
from jax_vit.model import attention_core, compute_dtype
from jax_vit.reporting import write_atomic
from jax_vit.train_step import micro_batch_count

# "jax" runs the config's attention (XLA by default), "jax-cudnn" the same step with cuDNN's fused attention.
FRAMEWORKS = ("jax", "jax-cudnn", "torch", "torch-compile")
SCHEMA = "vit-speed-benchmark/1"
# Settings that change the figures, recorded with them.
ENVIRONMENT_KEYS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                    "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE",
                    "JAX_COMPILATION_CACHE_DIR", "LD_PRELOAD")


class BenchmarkError(ValueError):
    """Bad benchmark options; the message names the fix."""


def parse_frameworks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FRAMEWORKS]
    if unknown or not names:
        raise BenchmarkError(f"--frameworks {text!r}: choose from {','.join(FRAMEWORKS)} (comma-separated)")
    return list(dict.fromkeys(names))


def machine_load() -> dict[str, Any]:
    """`uptime` and the load averages: the CPU is shared, so every figure carries the load it ran under."""
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uptime = None
    return {"uptime": uptime, "loadavg": list(os.getloadavg())}


def versions() -> dict[str, str]:
    import flax
    import jax
    import jaxlib
    import optax

    return {
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
        "numpy": np.__version__,
    }




# Recipe pieces only the JAX step has (the PyTorch baseline is the write-ups' plain recipe): a config with
# any of them on would time different work on the two sides.
JAX_ONLY = ("ema_decay", "mixup_alpha", "cutmix_alpha", "randaugment_ops", "trivial_augment", "random_erasing")


def check_comparable(config: Config, frameworks: list[str]) -> None:
    """Both sides must do the same work on the same kind of device, or the ratios mean nothing."""
    import jax

    on = [name for name in JAX_ONLY if getattr(config, name)]
    if on and any(name.startswith("torch") for name in frameworks):
        raise BenchmarkError(f"{', '.join(on)} run in the JAX step only: benchmark a write-up preset (seed-384x8, "
                             f"seed-256x6, tiny) or --set them to 0")
    if "jax-cudnn" in frameworks and jax.default_backend() != "gpu":
        raise BenchmarkError(f"jax-cudnn (cuDNN's fused attention) needs an NVIDIA GPU, and JAX runs on "
                             f"{jax.default_backend()} here: leave it out of --frameworks")
    torch_kind = "gpu" if torch.cuda.is_available() else "cpu"
    if any(name.startswith("torch") for name in frameworks) and jax.default_backend() != torch_kind:
        raise BenchmarkError(f"JAX runs on {jax.default_backend()} but PyTorch on {torch_kind}: install the "
                             f"matching builds (bash scripts/setup.sh gpu) so both use the same device")


def make_runners(config: Config, frameworks: list[str], batch_size: int, loader_workers: int):
    images, labels = synthetic_batch(config, batch_size, seed=config.seed)
    jax_runner = JaxRunner(config, images, labels)  # always built: it holds the shared starting weights
    runners = {"jax": jax_runner} if "jax" in frameworks else {}
    for name in frameworks:
        if name == "jax-cudnn":  # the same starting weights: the same config seeds them
            runners[name] = JaxRunner(config.replace(attention="cudnn"), images, labels)
        elif name.startswith("torch"):
            runners[name] = TorchRunner(config, images, labels, jax_runner.initial_params(),
                                        compile=name == "torch-compile", loader_workers=loader_workers)
    return runners


def attention_agreement(config: Config, batch_size: int) -> dict[str, Any]:
    """The model's two attention implementations (`attention_core`, "xla", and cuDNN's through
    `jax.nn.dot_product_attention`) on the model's shapes in its compute dtype, each against a float32
    reference: cuDNN "computes the same" when its largest error is at most twice XLA's (both round to
    bfloat16, in different orders)."""
    import functools

    import jax
    import jax.numpy as jnp

    dtype = compute_dtype(config)
    shape = (batch_size, config.num_patches + 1, config.num_heads, config.width // config.num_heads)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in jax.random.split(jax.random.key(0), 3))
    with jax.default_matmul_precision("highest"):
        reference = attention_core(q, k, v)
    errors = {}
    implementations = {"xla": attention_core,
                       "cudnn": functools.partial(jax.nn.dot_product_attention, implementation="cudnn")}
    for implementation, attend in implementations.items():
        out = jax.jit(attend)(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32)
        errors[implementation] = float(jnp.max(jnp.abs(out - reference)))
    return {"dtype": str(np.dtype(dtype)), "shape_bthd": list(shape), "max_abs_error_vs_float32": errors,
            "same": errors["cudnn"] <= 2 * errors["xla"] + 1e-6}


def run_benchmark(
    config: Config, *, frameworks: list[str], batch_size: int, steps: int, repeats: int, warmup_steps: int,
    dataset=None, epoch_repeats: int = 1, loader_workers: int = 2, progress: bool = True,
) -> dict[str, Any]:
    """Every figure of the comparison, as the dict `build_report` turns into the JSON."""
    config = config.replace(batch_size=batch_size)
    if dataset is not None:
        config = config.replace(dataset=dataset.name, in_channels=dataset.channels,
                                num_classes=len(dataset.class_names))
    check_comparable(config, frameworks)
    load_before = machine_load()
    runners = make_runners(config, frameworks, batch_size, loader_workers)
    figures: dict[str, dict[str, Any]] = {name: {"step_seconds": [], "epochs": []} for name in runners}
    for name, runner in runners.items():
        figures[name]["first_step_s"] = runner.first_step()
        figures[name]["warmup_s"] = runner.run(warmup_steps)

    rounds = tqdm(range(repeats), desc="timed rounds", disable=not progress)
    names = list(runners)
    for round_index in rounds:
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name]["step_seconds"].append(runners[name].run(steps) / steps)

    if dataset is not None and epoch_repeats > 0:
        for runner in runners.values():
            runner.prepare_epochs(dataset.train_images, dataset.train_labels)
        for round_index in tqdm(range(epoch_repeats), desc="epochs", disable=not progress):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, images_seen = runners[name].epoch()
                figures[name]["epochs"].append({"seconds": seconds, "images": images_seen})

    for name, runner in runners.items():
        figures[name]["device"] = runner.device_name
        figures[name]["peak_memory_bytes"] = runner.peak_memory_bytes()
        figures[name]["attention"] = runner.attention
        figures[name]["final_loss"] = runner.last_loss()
        if isinstance(runner, JaxRunner):
            figures[name]["compiled_memory_bytes"] = runner.compiled_memory_bytes
    return {
        "attention_check": attention_agreement(config, batch_size) if "jax-cudnn" in runners else None,
        "config": config, "frameworks": names, "batch_size": batch_size, "steps": steps, "repeats": repeats,
        "warmup_steps": warmup_steps, "figures": figures, "load_before": load_before, "load_after": machine_load(),
        "dataset": None if dataset is None else {"name": dataset.name, "source": dataset.source,
                                                  "train_images": len(dataset.train_images)},
        "loader_workers": loader_workers, "torch_device": next(
            (r.device.type for r in runners.values() if isinstance(r, TorchRunner)), None),
    }


def _summary(config: Config, batch_size: int, fig: dict[str, Any]) -> dict[str, Any]:
    step_s = statistics.median(fig["step_seconds"])
    images_per_s = batch_size / step_s
    out = {
        "device": fig["device"],
        "first_step_s": fig["first_step_s"],
        "warmup_s": fig.get("warmup_s"),
        "attention": fig.get("attention"),
        # The loss of the last timed step on the one fixed batch: every runner trains the same weights on it the
        # same number of steps, so the JAX attention implementations must agree here (PyTorch gets
        # un-augmented images, so its loss falls on another path).
        "final_loss": fig.get("final_loss"),
        "step_ms_median": 1e3 * step_s,
        "step_ms_all": [1e3 * s for s in fig["step_seconds"]],
        "images_per_s": images_per_s,
        "peak_memory_bytes": fig["peak_memory_bytes"],
        "mfu": flops.mfu(config, images_per_s, fig["device"]),
    }
    if "compiled_memory_bytes" in fig:
        out["compiled_memory_bytes"] = fig["compiled_memory_bytes"]
    if fig["epochs"]:
        seconds = [e["seconds"] for e in fig["epochs"]]
        out["epoch"] = {
            "seconds_median": statistics.median(seconds), "seconds_all": seconds,
            "images": fig["epochs"][0]["images"],
            "images_per_s": fig["epochs"][0]["images"] / statistics.median(seconds),
        }
    return out


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each JAX variant's throughput over each PyTorch variant's, and cuDNN attention's over XLA's (above 1:
    the first is faster)."""
    pairs = [(a, b) for a in ("jax", "jax-cudnn") for b in results if a in results and b.startswith("torch")]
    if "jax" in results and "jax-cudnn" in results:
        pairs.append(("jax-cudnn", "jax"))
    ratios = {}
    for a, b in pairs:
        ratios[f"{a}/{b}"] = results[a]["images_per_s"] / results[b]["images_per_s"]
        if "epoch" in results[a] and "epoch" in results[b]:
            ratios[f"{a}/{b} epoch"] = results[b]["epoch"]["seconds_median"] / results[a]["epoch"]["seconds_median"]
    return ratios


def precision(config: Config, torch_device: str | None) -> dict[str, str]:
    """What each framework computes in, from the config's `compute_dtype` (both follow the same rule,
    `jax_vit.precision`): JAX on this process's first device."""
    jax_dtype = compute_dtype(config).name
    torch_dtype = autocast_dtype(torch.device(torch_device), config.compute_dtype) if torch_device else None
    scaling = " with loss scaling" if jax_dtype == "float16" else ""
    torch_name = str(torch_dtype).removeprefix("torch.")
    return {
        "jax": f"{jax_dtype} compute{scaling}, float32 params" if jax_dtype != "float32" else "float32",
        "torch": f"{torch_name} autocast{' with GradScaler' if torch_dtype == torch.float16 else ''}, float32 params"
                 if torch_dtype is not None else "float32",
    }


def machine_record(device_names: list[str]) -> dict[str, Any]:
    """The `machine` entry of a speed record: devices, CPU, threads and the settings that change the figures."""
    import jax

    return {"devices": device_names, "jax_platform": jax.default_backend(), "jax_devices": jax.device_count(),
            "cpu": cpu_model(), "cpu_kind": cpu_kind(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "environment": {key: os.environ.get(key) for key in ENVIRONMENT_KEYS}}


def build_report(run: dict[str, Any], *, preset: str, command: str) -> dict[str, Any]:
    """The JSON schema, written in one place."""
    import jax

    config: Config = run["config"]
    return report_frame(SCHEMA, run, command, settings={
        "preset": preset, "batch_size": run["batch_size"], "steps_per_repeat": run["steps"],
        "repeats": run["repeats"], "warmup_steps": run["warmup_steps"], "frameworks": run["frameworks"],
        "precision": precision(config, run["torch_device"]),
        # How many slices of the batch the JAX step runs the model on (config.micro_batches resolved here).
        "jax_micro_batches": micro_batch_count(config, run["batch_size"]),
        "torch_optimizer": "AdamW(fused=True)", "torch_compile_mode": "default",
        "dataset": run["dataset"], "torch_loader_workers": run["loader_workers"],
        "notes": ("Synthetic steps: one fixed in-memory batch. The JAX step is the production step, so it "
                  "also runs the on-device crop, flip and normalisation; PyTorch steps get a normalised "
                  "tensor already on the device. Epochs: JAX gathers batches from the device-resident "
                  "training set and augments inside the step; PyTorch uses a DataLoader with torchvision "
                  "RandomCrop/RandomHorizontalFlip/ToTensor/Normalize in worker processes. First step: "
                  "tracing and compilation included, cold (no JAX persistent cache; Inductor's FX-graph "
                  "and autograd caches off and a fresh kernel folder when run from scripts/benchmark.py)."),
    }, attention_check=run.get("attention_check"))


def report_frame(schema: str, run: dict[str, Any], command: str, *, settings: dict[str, Any],
                 extra_versions: dict[str, str] | None = None, **fields) -> dict[str, Any]:
    """What every speed report holds around its `settings`: when, the command, the machine, the versions, the
    load, the model and its FLOPs, per-framework summaries of `run["figures"]` and their ratios (the fields
    `format_table` reads). `fields` go in after them."""
    config: Config = run["config"]
    results = {name: _summary(config, run["batch_size"], fig) for name, fig in run["figures"].items()}
    device_names = sorted({r["device"] for r in results.values()})
    return {
        "schema": schema,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_record(device_names),
        "versions": {**versions(), **(extra_versions or {})},
        "load": {"before": run["load_before"], "after": run["load_after"]},
        "settings": settings,
        "model": {
            "config": config.to_dict(),
            "forward_flops_per_image": flops.forward_flops_per_image(config),
            "train_flops_per_image": flops.train_flops_per_image(config),
            "peak_flops": {d: flops.peak_flops(d) for d in device_names},
        },
        "results": results,
        "ratios": _ratios(results),
        **fields,
    }


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def format_table(report: dict[str, Any]) -> str:
    header = ("framework", "img/s", "ms/step", "first step s", "peak MiB", "MFU", "epoch s", "epoch img/s")
    rows = [header]
    for name, r in report["results"].items():
        epoch = r.get("epoch")
        rows.append((
            name, f"{r['images_per_s']:.1f}", f"{r['step_ms_median']:.1f}", f"{r['first_step_s']:.1f}",
            _mib(r["peak_memory_bytes"] if r["peak_memory_bytes"] is not None else r.get("compiled_memory_bytes")),
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            "-" if epoch is None else f"{epoch['seconds_median']:.1f}",
            "-" if epoch is None else f"{epoch['images_per_s']:.1f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    settings = report["settings"]
    lines.insert(0, f"{settings['preset']}, batch {settings['batch_size']}, {settings['repeats']} x "
                    f"{settings['steps_per_repeat']} steps (medians) on {', '.join(report['machine']['devices'])}; "
                    f"load {report['load']['before']['loadavg'][0]:.2f} -> {report['load']['after']['loadavg'][0]:.2f}")
    lines += [f"{key}: {value:.2f}x" for key, value in report["ratios"].items()]
    return "\n".join(lines)


def write_json_atomic(report: dict[str, Any], path: Path) -> None:
    """Written to a temporary sibling and renamed, so an interrupted run never leaves half a file."""
    write_atomic(path, json.dumps(report, indent=2) + "\n")


def command_line() -> str:
    """The command as typed: `sys.orig_argv` keeps `-m module` (sys.argv would hold the module's file path)."""
    return " ".join([Path(sys.executable).name] + getattr(sys, "orig_argv", [None] + sys.argv)[1:])
