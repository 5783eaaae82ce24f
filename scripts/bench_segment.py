"""Per-stage time per image of the chain (TextSegmenter) against calling groundingdino-py and sam2 directly,
the way their own demos do, with the same models (Swin-T OGC + SAM 2.1 tiny; random weights give the real
compute). On CUDA both run under bf16 autocast, and images/s over the folder is measured too.

  python scripts/bench_segment.py --image-dir ../shared/data/seg --device cpu --repeats 2
Writes results/<cpu|cuda>/segment_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

import numpy as np
import torch

from torch_seg.device import autocast, resolve_device
from torch_seg.errors import UserError
from torch_seg.images import list_images, load_image
from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
from torch_seg.results import write_json


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        sync(device)
        ms["detect"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        with torch.inference_mode():
            sam_predictor.set_image(image)
        sync(device)
        ms["sam_encode"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        if len(xyxy):
            with torch.inference_mode():
                sam_predictor.predict(box=xyxy, multimask_output=False)
        sync(device)
        ms["sam_decode"] = (time.perf_counter() - t) * 1e3
    ms["num_boxes"] = len(xyxy)
    return ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "seg"))
    p.add_argument("--prompt", default="truck. car. paper bag.")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-detections", type=int, default=10,
                   help="boxes per image for both paths: random weights pass ~all 900 queries, real scenes a few")
    p.add_argument("--out", default=None, help="default: results/<device type>/segment_bench.json")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        paths = list_images(args.image_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    quiet_library_warnings()
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    segmenter = TextSegmenter(device=str(device), random_weights=True, max_detections=args.max_detections)
    gdino_model, sam_predictor = segmenter.seeder.model, segmenter.sam.predictor
    images = {path.name: load_image(path) for path in paths}
    caption = args.prompt.lower()
    # Warm-up (first-call allocations, lazy imports) on the smallest image, for both paths.
    smallest = min(images, key=lambda k: images[k].size)
    segmenter.segment(images[smallest], args.prompt)
    direct_demo_call(gdino_model, sam_predictor, images[smallest], caption, device, 0.35, 0.25, args.max_detections)

    per_image = {}
    for name, image in images.items():
        chain_runs, direct_runs = [], []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            chain_runs.append(segmenter.segment(image, args.prompt).timings_ms)
            direct_runs.append(direct_demo_call(gdino_model, sam_predictor, image, caption, device, 0.35, 0.25,
                                                args.max_detections))
        stages = ("detect", "sam_encode", "sam_decode")
        summary = {"size_wh": [image.shape[1], image.shape[0]]}
        for label, runs in (("chain_ms", chain_runs), ("direct_ms", direct_runs)):
            summary[label] = {s: round(statistics.median(r[s] for r in runs), 1) for s in stages}
            summary[label]["total"] = round(sum(summary[label][s] for s in stages), 1)
        summary["chain_minus_direct_ms"] = round(summary["chain_ms"]["total"] - summary["direct_ms"]["total"], 1)
        per_image[name] = summary
        print(name, json.dumps(summary), flush=True)

    start = time.perf_counter()
    for image in images.values():
        segmenter.segment(image, args.prompt)
    sync(device)
    images_per_s = len(images) / (time.perf_counter() - start)

    def cpu_model():
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)

    def version(pkg):
        from importlib.metadata import version as v
        return v(pkg)

    report = {
        "what": "per-stage wall time per image (median of repeats), chain vs direct library calls; random weights",
        "models": "GroundingDINO Swin-T OGC (bert-base config) + SAM 2.1 hiera tiny, random weights",
        "prompt": args.prompt, "repeats": args.repeats, "boxes_per_image": args.max_detections,
        "device": str(device),
        "autocast": "bf16" if device.type == "cuda" else "none (fp32)",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_model": cpu_model(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{k: version(k) for k in ("sam2", "groundingdino-py", "transformers", "numpy")}},
        "load_average_before_after": [list(map(lambda x: round(x, 2), load_before)),
                                      [round(x, 2) for x in os.getloadavg()]],
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "per_image": per_image,
        "images_per_s_chain_folder": round(images_per_s, 4),
    }
    out = Path(args.out or Path("results") / device.type / "segment_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"images/s over {len(images)} photos: {images_per_s:.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
