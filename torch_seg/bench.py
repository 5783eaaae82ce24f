"""Speed of the image chain (`TextSegmenter`: GroundingDINO Swin-T boxes -> SAM 2.1 masks) per stage and image.

`measure_segmentation` times, on every photo of a folder, the chain's three stages (detect, SAM encode, SAM
decode; images decoded beforehand, no file writing) and, optionally, groundingdino-py and sam2 called directly
the way their demos do with the same models, interleaved so load from other processes hits both alike. Model
building (`load_s`) and the first image (`first_image_s`: first-call allocations, lazy imports, cuDNN's kernel
choice) are timed apart from the steady per-image figures. Both run under the device's autocast
(`torch_seg.device`: bf16 on Ampere and newer, fp16 on V100/T4, none on the CPU and MPS).

Weights: the real checkpoints where all are present (`weights="auto"`), else random weights, which give the
real compute (architecture and input size fix the work) but arbitrary boxes: the record says which.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from torch_seg.device import autocast, autocast_choice, synchronize
from torch_seg.errors import UserError
from torch_seg.images import list_images, load_image

WEIGHTS = ("random", "checkpoints", "auto")
STAGES = ("detect", "sam_encode", "sam_decode")
BOX_THRESHOLD, TEXT_THRESHOLD = 0.35, 0.25  # the demos' defaults, for the direct path


def _sync(device: torch.device) -> None:
    synchronize(device)


def choose_weights(weights: str, sam2_model: str, gdino_model: str) -> tuple[bool, str]:
    """(random_weights, why). "auto": the checkpoints when every one is present, else random weights."""
    from torch_seg.checkpoints import resolve_gdino_checkpoint, resolve_sam2_checkpoint, resolve_text_encoder

    if weights not in WEIGHTS:
        raise UserError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    if weights == "random":
        return True, "random weights asked for (--weights random)"
    try:
        resolve_sam2_checkpoint(sam2_model)
        resolve_gdino_checkpoint(gdino_model)
        resolve_text_encoder(None)
    except UserError as error:
        if weights == "checkpoints":
            raise
        return True, f"random weights: {error}"
    return False, "the released checkpoints"


def direct_demo_call(gdino_model, sam_predictor, image: np.ndarray, caption: str, device, box_t, text_t,
                     max_boxes: int) -> dict:
    """groundingdino.util.inference (load_image transform + predict) then SAM2ImagePredictor, as in the demos."""
    import groundingdino.datasets.transforms as T
    from groundingdino.util.inference import predict
    from PIL import Image
    from torchvision.ops import box_convert

    ms = {}
    with autocast(device):
        t = time.perf_counter()
        transform = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                               T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        tensor, _ = transform(Image.fromarray(image), None)
        boxes, logits, phrases = predict(gdino_model, tensor, caption, box_t, text_t, device=str(device))
        h, w = image.shape[:2]
        xyxy = box_convert(boxes * torch.tensor([w, h, w, h]), "cxcywh", "xyxy").numpy()
        xyxy = xyxy[np.argsort(-logits.numpy(), kind="stable")[:max_boxes]]  # the chain keeps the best too
        _sync(device)
        ms["detect"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        with torch.inference_mode():
            sam_predictor.set_image(image)
        _sync(device)
        ms["sam_encode"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        if len(xyxy):
            with torch.inference_mode():
                sam_predictor.predict(box=xyxy, multimask_output=False)
        _sync(device)
        ms["sam_decode"] = (time.perf_counter() - t) * 1e3
    ms["num_boxes"] = len(xyxy)
    return ms


def _medians(runs: list[dict]) -> dict:
    out = {s: round(statistics.median(r[s] for r in runs), 1) for s in STAGES}
    out["total"] = round(sum(out[s] for s in STAGES), 1)
    return out


def _machine(device: torch.device) -> dict:
    from importlib.metadata import version

    def cpu_model():
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)

    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                     **{k: version(k) for k in ("sam2", "groundingdino-py", "transformers", "numpy")}},
    }


def measure_segmentation(image_dir: str | Path, *, prompt: str, device: torch.device, repeats: int = 2,
                         max_detections: int = 10, weights: str = "random", max_images: int | None = None,
                         resize_shortest: int | None = None, small_text_encoder: bool = False,
                         direct: bool = True, progress=print) -> dict:
    """Every figure of the image-chain benchmark, as the JSON record `scripts/bench_segment.py` writes."""
    from torch_seg.checkpoints import DEFAULT_GDINO_MODEL, DEFAULT_SAM2_MODEL
    from torch_seg.pipeline import TextSegmenter

    if repeats < 1 or max_detections < 1 or (max_images is not None and max_images < 1):
        raise UserError(f"--repeats {repeats} / --max-detections {max_detections} / --max-images {max_images}: "
                        f"each must be at least 1")
    paths = list_images(image_dir)[:max_images]
    random_weights, weights_note = choose_weights(weights, DEFAULT_SAM2_MODEL, DEFAULT_GDINO_MODEL)
    if small_text_encoder and not random_weights:
        raise UserError("--small-text-encoder replaces the checkpoint's BERT: use it with --weights random only")
    text_encoder = None
    if small_text_encoder:
        from torch_seg.text_encoder import SMALL_BERT, random_weights_text_encoder
        text_encoder = random_weights_text_encoder(**SMALL_BERT)
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    started = time.perf_counter()
    segmenter = TextSegmenter(device=str(device), random_weights=random_weights, max_detections=max_detections,
                              text_encoder=text_encoder, seeder_options={"resize_shortest": resize_shortest})
    _sync(device)
    load_s = time.perf_counter() - started
    gdino_model, sam_predictor = segmenter.seeder.model, segmenter.sam.predictor
    images = {path.name: load_image(path) for path in paths}
    caption = prompt.lower()
    # Warm-up (first-call allocations, lazy imports, kernel choice) on the smallest image, for both paths.
    smallest = min(images, key=lambda k: images[k].size)
    started = time.perf_counter()
    segmenter.segment(images[smallest], prompt)
    _sync(device)
    first_image_s = time.perf_counter() - started
    if direct:
        direct_demo_call(gdino_model, sam_predictor, images[smallest], caption, device, BOX_THRESHOLD,
                         TEXT_THRESHOLD, max_detections)

    per_image, chain_wall_s = {}, 0.0
    for name, image in images.items():
        chain_runs, direct_runs = [], []
        for _ in range(repeats):  # interleaved, so load from other processes hits both alike
            started = time.perf_counter()
            chain_runs.append(segmenter.segment(image, prompt).timings_ms)
            _sync(device)
            chain_wall_s += time.perf_counter() - started
            if direct:
                direct_runs.append(direct_demo_call(gdino_model, sam_predictor, image, caption, device,
                                                    BOX_THRESHOLD, TEXT_THRESHOLD, max_detections))
        summary = {"size_wh": [image.shape[1], image.shape[0]], "chain_ms": _medians(chain_runs)}
        if direct:
            summary["direct_ms"] = _medians(direct_runs)
            summary["chain_minus_direct_ms"] = round(summary["chain_ms"]["total"] - summary["direct_ms"]["total"], 1)
        per_image[name] = summary
        progress(f"{name}: {summary}")

    # Whole chain calls, stage bookkeeping included, over every photo and repeat: the folder's images/s.
    images_per_s = len(images) * repeats / chain_wall_s
    mean_ms = {s: round(statistics.mean(p["chain_ms"][s] for p in per_image.values()), 1) for s in (*STAGES, "total")}
    what = "random weights" if random_weights else "released checkpoints"
    return {
        "what": f"per-stage wall time per image (median of repeats), chain{' vs direct library calls' if direct else ''}; "
                f"{what}",
        "models": f"GroundingDINO Swin-T OGC + SAM 2.1 hiera tiny, {what}",
        "random_weights": random_weights, "weights_note": weights_note,
        "text_encoder": "small BERT (1 layer, random weights)" if small_text_encoder else "bert-base",
        "gdino_resize_shortest": segmenter.seeder.resize_shortest,
        "prompt": prompt, "repeats": repeats, "boxes_per_image": max_detections,
        "device": str(device), "autocast": autocast_choice(device).name or "none (fp32)",
        **_machine(device),
        "load_average_before_after": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "load_s": round(load_s, 3),
        "first_image_s": round(first_image_s, 3),
        "per_image": per_image,
        "chain_ms_mean_over_images": mean_ms,
        "images_per_s_chain_folder": round(images_per_s, 4),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
