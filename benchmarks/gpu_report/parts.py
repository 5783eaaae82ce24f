"""The five parts: what each runs (its steps, one subprocess each), what it needs, and the figures and table
rows it makes of its steps' JSON records.

A part is planned when its turn comes, so it can read the parts before it (the matmul peaks for MFU, the
machine's frameworks). A step's command is built when it starts, from the seconds left of its part's share.
This module imports neither framework, nor `torch_seg`: segmentation runs through its scripts.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPEED_MAIN = ("seed-384x8", 512)
SPEED_EXTRA = (("tiny", 64), ("seed-256x6", 128))  # each preset at its own batch size
SPEED_FULL_S = 400  # from this share on: 10 timed rounds and real-data epochs in the main speed step
TRACK_FRAMES = 40  # the bedroom clip's frames, as the SAM 2 authors' benchmark
AUTHORS_FPS = {"tiny": 91.2, "base_plus": 64.1}  # SAM 2.1 README, A100, VOS-compiled, bf16
SEGMENT_PROMPT = "truck. car. paper bag."


@dataclass
class Step:
    """One subprocess of a part. `command(seconds_left)` gives its argv; `skip` a reason fixed at planning."""

    name: str
    command: Callable[[float], list[str]]
    output: Path
    min_s: float
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


@dataclass
class Context:
    out: Path
    data_dir: Path
    smoke: bool
    budget_s: float
    gpus: list[dict]
    parts: dict[str, dict] = field(default_factory=dict)  # finished parts' report entries

    def script(self, name: str) -> list[str]:
        return [sys.executable, str(REPO / "scripts" / name)]

    def module(self, name: str) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.gpu_report.{name}"]

    def machine_figures(self) -> dict:
        entry = self.parts.get("machine") or {}
        return entry.get("figures") or {}


def _smoke(ctx: Context) -> list[str]:
    return ["--smoke"] if ctx.smoke else []


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def fashion_mnist_dir(data_dir: Path) -> Path | None:
    for folder in (data_dir / "fashion-mnist", SYSTEM_FASHION_MNIST):
        if any(folder.glob("train-images-idx3-ubyte*")):
            return folder
    return None


def cifar_dir(data_dir: Path) -> Path | None:
    for folder in (data_dir / "cifar-10-batches-py", data_dir):
        if (folder / "data_batch_1").exists():
            return folder
    return None


def photos(data_dir: Path) -> list[Path]:
    folder = data_dir / "seg"
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []


def frames_dir(data_dir: Path) -> Path | None:
    folder = data_dir / "seg" / "bedroom"
    return folder if folder.is_dir() and any(folder.glob("*.jpg")) else None


def _missing_sam2() -> str | None:
    missing = [name for name in ("sam2", "groundingdino") if not has_module(name)]
    if missing:
        return (f"{' and '.join(missing)} not installed (bash scripts/setup.sh installs them; on a machine without "
                f"internet, from a wheelhouse: bash scripts/setup.sh system --wheelhouse DIR)")
    return None


# ---------------------------------------------------------------- machine

def machine_steps(ctx: Context) -> list[Step]:
    return [Step(f"{framework}", lambda left, f=framework: ctx.module("machine") + [
        "--framework", f, "--out", str(ctx.out / "machine" / f"{f}.json")] + _smoke(ctx),
        ctx.out / "machine" / f"{framework}.json", min_s=3 if ctx.smoke else 8,
        env={"OMP_WAIT_POLICY": "PASSIVE"})  # as the speed benchmark runs PyTorch on a CPU (no busy-waiting)
        for framework in ("jax", "torch")]


def machine_figures(ctx: Context, steps: list[dict]) -> dict:
    figures: dict[str, Any] = {"gpus": ctx.gpus}
    for step in steps:
        if step.get("record"):
            figures[step["name"]] = step["record"]
    return figures


def _tflops(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e12:.1f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.1f} GFLOP/s"


def machine_rows(ctx: Context, figures: dict) -> list[dict]:
    rows = []
    for framework in ("jax", "torch"):
        record = figures.get(framework)
        if not record:
            continue
        m = record["matmul"]
        datasheet = record["datasheet_peak_flops"]
        value = _tflops(record["measured_peak_flops"])
        if datasheet:
            value += f" ({100 * record['measured_over_datasheet']:.0f}% of the data sheet's {_tflops(datasheet)})"
        rows.append({"figure": f"matmul peak, {'JAX' if framework == 'jax' else 'PyTorch'} ({m['dtype']}, "
                               f"{m['size']}x{m['size']}, median of {m['rounds']})",
                     "value": value, "file": f"machine/{framework}.json",
                     "numbers": {"measured_peak_flops": record["measured_peak_flops"],
                                 "datasheet_peak_flops": datasheet}})
    return rows


# ---------------------------------------------------------------- speed

def speed_inputs(ctx: Context) -> str | None:
    if ctx.smoke:
        return None
    figures = ctx.machine_figures()
    for framework, wanted in (("jax", "gpu"), ("torch", "cuda")):
        platform = (figures.get(framework) or {}).get("platform")
        if platform is not None and platform != wanted:
            return (f"{framework} runs on {platform} here, not the GPU: install its CUDA build "
                    f"(requirements-gpu.txt) so both frameworks use the GPU")
    return None


def speed_steps(ctx: Context, allowance_s: float) -> list[Step]:
    if ctx.smoke:
        preset, batch = "tiny", 32
        frameworks, timing = "jax,torch,torch-compile", ["--steps", "2", "--repeats", "2", "--warmup-steps", "1"]
    else:
        preset, batch = SPEED_MAIN
        frameworks = "jax,jax-cudnn,torch,torch-compile"
        full = allowance_s >= SPEED_FULL_S
        timing = ["--steps", "20", "--repeats", "10" if full else "5", "--warmup-steps", "3"]
        if full and cifar_dir(ctx.data_dir):
            timing += ["--data-dir", str(ctx.data_dir), "--epoch-repeats", "1", "--loader-workers", "8"]
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # both frameworks in one process: JAX must not take 75%

    def step(preset: str, batch: int, frameworks: str, timing: list[str], min_s: float, skip=None) -> Step:
        out = ctx.out / "speed" / f"{preset}_batch{batch}.json"
        return Step(f"{preset} batch {batch}", lambda left: ctx.script("benchmark.py") + [
            "--config", preset, "--batch-size", str(batch), "--frameworks", frameworks, *timing,
            "--out", str(out), "--no-progress"], out, min_s, env, skip)

    steps = [step(preset, batch, frameworks, timing, 20 if ctx.smoke else 90)]
    for name, size in SPEED_EXTRA:
        steps.append(step(name, size, "jax,jax-cudnn,torch,torch-compile",
                          ["--steps", "20", "--repeats", "5", "--warmup-steps", "3"], 60,
                          skip="--smoke times one preset" if ctx.smoke else None))
    return steps


def _mfu(train_flops: float, images_per_s: float, peak: float | None) -> float | None:
    return None if not peak else train_flops * images_per_s / peak


def speed_figures(ctx: Context, steps: list[dict]) -> dict:
    machine = ctx.machine_figures()
    measured = {f: (machine.get(f) or {}).get("measured_peak_flops") for f in ("jax", "torch")}
    figures: dict[str, Any] = {"runs": {}}
    if ctx.smoke:
        figures["not_run"] = {"jax-cudnn": "cuDNN's fused attention needs an NVIDIA GPU; --smoke runs on the CPU"}
    for step in steps:
        report = step.get("record")
        if not report:
            continue
        train_flops = report["model"]["train_flops_per_image"]
        results = {}
        for name, r in report["results"].items():
            results[name] = {
                "ms_per_step": r["step_ms_median"], "images_per_s": r["images_per_s"],
                "mfu_datasheet": r["mfu"],
                "mfu_measured_peak": _mfu(train_flops, r["images_per_s"], measured["jax" if name.startswith("jax")
                                                                                   else "torch"]),
                "peak_memory_bytes": r["peak_memory_bytes"], "compiled_memory_bytes": r.get("compiled_memory_bytes"),
                "compile_s": r["first_step_s"], "warmup_s": r.get("warmup_s"), "final_loss": r.get("final_loss"),
                "attention": r.get("attention"), "device": r["device"],
                "epoch_images_per_s": (r.get("epoch") or {}).get("images_per_s"),
            }
        run = {"preset": report["settings"]["preset"], "batch_size": report["settings"]["batch_size"],
               "repeats": report["settings"]["repeats"], "steps": report["settings"]["steps_per_repeat"],
               "precision": report["settings"]["precision"], "versions": report["versions"],
               "results": results, "ratios": report["ratios"], "attention_check": report.get("attention_check")}
        run["attention_verdict"] = attention_verdict(run)
        figures["runs"][step["name"]] = run
    return figures


def attention_verdict(run: dict) -> str | None:
    """Whether cuDNN's attention should become the GPU default: faster, and the same numbers."""
    results, check = run["results"], run.get("attention_check")
    if "jax-cudnn" not in results or "jax" not in results or not check:
        return None
    ratio = results["jax-cudnn"]["images_per_s"] / results["jax"]["images_per_s"]
    losses = results["jax"]["final_loss"], results["jax-cudnn"]["final_loss"]
    loss_gap = abs(losses[0] - losses[1]) / max(abs(losses[0]), 1e-9)
    same = check["same"] and loss_gap < 0.02
    faster = ratio > 1.02
    what = (f"cuDNN attention runs at {ratio:.2f}x XLA's; kernel error {check['max_abs_error_vs_float32']['cudnn']:.2g}"
            f" vs XLA's {check['max_abs_error_vs_float32']['xla']:.2g}; final loss {losses[1]:.4f} vs {losses[0]:.4f}")
    if faster and same:
        return f"{what}: make attention='cudnn' the GPU default"
    return f"{what}: keep attention='xla' ({'not faster' if not faster else 'numbers differ'})"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _peak_text(value) -> str:
    return "" if value is None else f", peak {_mib(value)}"


LABELS = {"jax": "JAX", "jax-cudnn": "JAX, cuDNN attention", "torch": "PyTorch eager", "torch-compile": "torch.compile"}


def speed_rows(ctx: Context, figures: dict) -> list[dict]:
    rows = []
    for step_name, run in figures["runs"].items():
        file = f"speed/{run['preset']}_batch{run['batch_size']}.json"
        jax_precision = run["precision"]["jax"]
        precision = "bf16" if "bfloat16" in jax_precision else "fp16" if "float16" in jax_precision else "float32"
        for name, r in run["results"].items():
            label = LABELS.get(name, name) + (" (XLA attention)" if name == "jax" else "")
            mfu = [f"{100 * r[key]:.0f}% {what}" for key, what in (
                ("mfu_datasheet", "of the data sheet"), ("mfu_measured_peak", "of the measured matmul peak"))
                if r[key] is not None]
            memory = (f"peak {_mib(r['peak_memory_bytes'])}" if r["peak_memory_bytes"] is not None
                      else f"compiled step {_mib(r['compiled_memory_bytes'])}" if r["compiled_memory_bytes"]
                      else "no allocator peak on the CPU")
            value = (f"{r['ms_per_step']:.1f} ms/step, {r['images_per_s']:,.0f} img/s, MFU {', '.join(mfu) or '-'}, "
                     f"{memory}, compile {r['compile_s']:.1f} s")
            rows.append({"figure": f"{run['preset']} batch {run['batch_size']} {precision}, {label}", "value": value,
                         "file": file, "peak_memory_bytes": r["peak_memory_bytes"], "compile_s": r["compile_s"],
                         "warmup_s": r["warmup_s"], "versions": run["versions"], "numbers": r})
        for key, ratio in run["ratios"].items():
            a, b = key.split(" ")[0].split("/")
            epoch = " (real-data epoch)" if key.endswith("epoch") else ""
            rows.append({"figure": f"{run['preset']} batch {run['batch_size']}: {LABELS.get(a, a)} / "
                                   f"{LABELS.get(b, b)}{epoch}", "value": f"{ratio:.2f}x", "file": file,
                         "versions": run["versions"], "numbers": {"ratio": ratio}})
        if run.get("attention_verdict"):
            rows.append({"figure": f"{run['preset']}: cuDNN vs XLA attention", "value": run["attention_verdict"],
                         "file": file, "versions": run["versions"], "numbers": run["attention_check"]})
    return rows


# ---------------------------------------------------------------- accuracy

def accuracy_steps(ctx: Context) -> list[Step]:
    cifar, fashion = cifar_dir(ctx.data_dir), fashion_mnist_dir(ctx.data_dir)
    minimum = 15 if ctx.smoke else 60

    def step(dataset: str, folder: Path | None, share_of_left: float, missing: str) -> Step:
        out = ctx.out / "accuracy" / dataset
        return Step(dataset, lambda left: ctx.module("accuracy") + [
            "--dataset", dataset, "--data-dir", str(folder), "--out", str(out), "--json", str(out) + ".json",
            "--budget-s", f"{left * share_of_left:.0f}"] + _smoke(ctx),
            Path(str(out) + ".json"), minimum, skip=None if folder else missing)

    # CIFAR-10 plans with 60% of what is left when Fashion-MNIST follows; Fashion-MNIST gets the rest.
    return [step("cifar10", cifar, 0.6 if fashion else 1.0, f"no CIFAR-10 python batches in {ctx.data_dir} "
                                                            f"(cifar-10-batches-py/)"),
            step("fashion_mnist", fashion, 1.0, f"no Fashion-MNIST IDX files in {ctx.data_dir / 'fashion-mnist'} or "
                                                f"{SYSTEM_FASHION_MNIST} (apt-get install dataset-fashion-mnist)")]


def accuracy_figures(ctx: Context, steps: list[dict]) -> dict:
    return {step["name"]: step["record"] for step in steps if step.get("record")}


DATASET_LABELS = {"cifar10": "CIFAR-10 sample", "fashion_mnist": "Fashion-MNIST"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def accuracy_rows(ctx: Context, figures: dict) -> list[dict]:
    rows = []
    for dataset, record in figures.items():
        if record.get("status") != "ok":
            continue
        plan = record["plan"]
        for setting, s in record["settings"].items():
            value = f"test {_pct(s['test_accuracy'])}"
            if s["test_accuracy_ema"] is not None:
                value += f" (EMA {_pct(s['test_accuracy_ema'])})"
            value += f", val {_pct(s['val_accuracy'])}"
            if s["val_accuracy_ema"] is not None:
                value += f" (EMA {_pct(s['val_accuracy_ema'])})"
            if s["seeds"] > 1:
                value += f", mean of {s['seeds']} seeds"
            if s["steady_epoch_s"] is not None:
                value += f"; {s['steady_epoch_s']:.1f} s/epoch"
            value += f"; epoch 1 (compile included) {s['first_epoch_s']:.1f} s"
            rows.append({"figure": f"{DATASET_LABELS[dataset]}, {setting} at {plan['base']} size, "
                                   f"{_count(plan['epochs'], 'epoch')}", "value": value, "file": f"accuracy/{dataset}/results.md",
                         "versions": record["versions"], "peak_memory_bytes": record.get("peak_memory_bytes"),
                         "compile_s": s["first_epoch_s"], "numbers": s})
        if "best_minus_writeup_test" in record:
            rows.append({"figure": f"{DATASET_LABELS[dataset]}: best - write-up 1, test", "file":
                         f"accuracy/{dataset}/accuracy.png", "value": f"{100 * record['best_minus_writeup_test']:+.1f} "
                                                                      f"points", "versions": record["versions"],
                         "numbers": {"difference": record["best_minus_writeup_test"]}})
    return rows


# ---------------------------------------------------------------- segment

def segment_inputs(ctx: Context) -> str | None:
    if not photos(ctx.data_dir):
        return f"no photos (*.jpg, *.png) in {ctx.data_dir / 'seg'}"
    return _missing_sam2() or _torch_on_cpu(ctx)


def _torch_on_cpu(ctx: Context) -> str | None:
    platform = (ctx.machine_figures().get("torch") or {}).get("platform")
    if not ctx.smoke and platform is not None and platform != "cuda":
        return "PyTorch runs on the CPU here: install its CUDA build (requirements-gpu.txt)"
    return None


def segment_steps(ctx: Context) -> list[Step]:
    out = ctx.out / "segment" / "segment_bench.json"
    if ctx.smoke:  # one photo, GroundingDINO at 256 px with a 1-layer BERT: the code path, not the figure
        options = ["--device", "cpu", "--repeats", "1", "--max-images", "1", "--resize-shortest", "256",
                   "--small-text-encoder", "--no-direct", "--weights", "random", "--max-detections", "3"]
    else:
        options = ["--device", "cuda", "--repeats", "3", "--weights", "auto"]
    return [Step("chain", lambda left: ctx.script("bench_segment.py") + [
        "--image-dir", str(ctx.data_dir / "seg"), "--prompt", SEGMENT_PROMPT, *options, "--out", str(out)],
        out, 10 if ctx.smoke else 30)]


def segment_figures(ctx: Context, steps: list[dict]) -> dict:
    record = steps[0].get("record") if steps else None
    if not record:
        return {}
    return {key: record.get(key) for key in (
        "models", "random_weights", "weights_note", "text_encoder", "gdino_resize_shortest", "device", "autocast",
        "versions", "machine", "load_s", "first_image_s", "chain_ms_mean_over_images", "images_per_s_chain_folder",
        "per_image", "repeats", "prompt", "peak_memory_bytes")}


def segment_rows(ctx: Context, figures: dict) -> list[dict]:
    if not figures:
        return []
    weights = " (random weights)" if figures["random_weights"] else ""
    dtype = {"bf16": "bf16", "bfloat16": "bf16", "float16": "fp16"}.get(figures["autocast"], "float32")
    what = f"GroundingDINO Swin-T + SAM 2.1 tiny, {dtype}{weights}"
    ms = figures["chain_ms_mean_over_images"]
    file, versions = "segment/segment_bench.json", figures["versions"]
    return [
        {"figure": f"{what}: ms per image ({_count(len(figures['per_image']), 'photo')}, median of "
                   f"{figures['repeats']})",
         "value": f"detect {ms['detect']:.0f} + SAM encode {ms['sam_encode']:.0f} + decode {ms['sam_decode']:.0f} = "
                  f"{ms['total']:.0f} ms", "file": file, "versions": versions, "numbers": ms},
        {"figure": f"{what}: images/s over the folder", "value": f"{figures['images_per_s_chain_folder']:.2f}"
                                                                  + _peak_text(figures.get("peak_memory_bytes")),
         "file": file, "versions": versions, "peak_memory_bytes": figures.get("peak_memory_bytes"),
         "numbers": {"images_per_s": figures["images_per_s_chain_folder"]}},
        {"figure": f"{what}: first image", "value": f"load {figures['load_s']:.1f} s + first image (warm-up) "
                                                    f"{figures['first_image_s']:.1f} s", "file": file,
         "versions": versions, "warmup_s": figures["first_image_s"],
         "numbers": {"load_s": figures["load_s"], "first_image_s": figures["first_image_s"]}},
    ]


# ---------------------------------------------------------------- track

def track_inputs(ctx: Context) -> str | None:
    if frames_dir(ctx.data_dir) is None:
        return f"no frames (*.jpg) in {ctx.data_dir / 'seg' / 'bedroom'}"
    missing = [name for name in ("sam2",) if not has_module(name)]
    if missing:
        return (f"sam2 not installed (bash scripts/setup.sh installs it; on a machine without internet, from a "
                f"wheelhouse: bash scripts/setup.sh system --wheelhouse DIR)")
    return _torch_on_cpu(ctx)


def track_steps(ctx: Context) -> list[Step]:
    frames = frames_dir(ctx.data_dir)
    steps = []
    # The VOS-compiled predictor's torch.compile (max-autotune) takes minutes: its minimum is an estimate.
    for model, vos, minimum in (("tiny", False, 25), ("base_plus", False, 35), ("tiny", True, 150),
                                ("base_plus", True, 200)):
        name = f"{model}{' vos' if vos else ''}"
        out = ctx.out / "track" / f"{model}{'_vos' if vos else ''}.json"
        skip = None
        if ctx.smoke and vos:
            skip = "the VOS-compiled predictor compiles for CUDA (torch.compile, max-autotune): not in --smoke"
        elif ctx.smoke and model != "tiny":
            skip = "--smoke times tiny only"
        if ctx.smoke:
            options = ["--device", "cpu", "--num-frames", "2", "--warmup-passes", "0"]  # frame 0 + 1 tracked
        else:
            options = ["--device", "cuda", "--num-frames", str(TRACK_FRAMES), "--warmup-passes", "3" if vos else "1"]
        steps.append(Step(name, lambda left, model=model, vos=vos, out=out, options=options: ctx.script(
            "bench_track.py") + ["--video", str(frames), "--models", model, *options,
                                 *(["--vos-optimized"] if vos else []), "--out", str(out)],
            out, 10 if ctx.smoke else minimum, skip=skip))
    return steps


def track_figures(ctx: Context, steps: list[dict]) -> dict:
    runs = {}
    for step in steps:
        record = step.get("record")
        if record:
            run = record["runs"][0]
            model = run["model"].removeprefix("sam2.1_hiera_")
            runs[step["name"]] = {**run, "authors_a100_fps": AUTHORS_FPS.get(model), "machine": record["machine"],
                                  "random_weights": record.get("random_weights")}
    return {"runs": runs}


def track_rows(ctx: Context, figures: dict) -> list[dict]:
    rows = []
    for name, run in figures["runs"].items():
        predictor = "VOS-compiled predictor" if run["vos_optimized"] else "plain predictor"
        authors = f" (authors: {run['authors_a100_fps']} on an A100, VOS-compiled)" if run["authors_a100_fps"] else ""
        rows.append({
            "figure": f"{run['model']} propagation, {predictor}, {run['dtype']}, {_count(run['objects'], 'object')}, "
                      f"{_count(run['tracked_frames'], 'frame')} {run['frame_size'][0]}x{run['frame_size'][1]}",
            "value": f"{run['frames_per_s']:.1f} frames/s{authors}; build {run['build_s']:.1f} s, warm-up "
                     f"{run.get('warmup_s', 0):.1f} s{_peak_text(run.get('peak_memory_bytes'))}",
            "file": f"track/{name.replace(' ', '_')}.json", "peak_memory_bytes": run.get("peak_memory_bytes"),
            "versions": {"torch": run["machine"]["torch"], "sam2": run["machine"]["sam2"]},
            "compile_s": run.get("warmup_s") if run["vos_optimized"] else None, "warmup_s": run.get("warmup_s"),
            "numbers": {k: run[k] for k in ("frames_per_s", "median_frame_ms", "build_s", "init_state_s")}})
    return rows


@dataclass(frozen=True)
class Part:
    name: str
    share: float
    steps: Callable[[Context, float], list[Step]]
    figures: Callable[[Context, list[dict]], dict]
    rows: Callable[[Context, dict], list[dict]]
    inputs: Callable[[Context], str | None] = lambda ctx: None


PARTS: dict[str, Part] = {part.name: part for part in (
    Part("machine", 0.05, lambda ctx, s: machine_steps(ctx), machine_figures, machine_rows),
    Part("speed", 0.30, speed_steps, speed_figures, speed_rows, speed_inputs),
    Part("accuracy", 0.35, lambda ctx, s: accuracy_steps(ctx), accuracy_figures, accuracy_rows),
    Part("segment", 0.15, lambda ctx, s: segment_steps(ctx), segment_figures, segment_rows, segment_inputs),
    Part("track", 0.15, lambda ctx, s: track_steps(ctx), track_figures, track_rows, track_inputs),
)}
