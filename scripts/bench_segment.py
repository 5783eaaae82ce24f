"""Per-stage time per image of the chain (TextSegmenter) against calling groundingdino-py and sam2 directly,
the way their own demos do, with the same models (Swin-T OGC + SAM 2.1 tiny; random weights give the real
compute). On CUDA both run under the GPU's autocast (bf16 from Ampere on, fp16 on V100/T4), and images/s over the
folder is measured too.

  python scripts/bench_segment.py --image-dir ../shared/data/seg --device cpu --repeats 2
Writes results/<cpu|cuda>/segment_bench.json. The logic is torch_seg.bench.measure_segmentation.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

from torch_seg.bench import WEIGHTS, measure_segmentation
from torch_seg.device import resolve_device
from torch_seg.errors import UserError
from torch_seg.pipeline import quiet_library_warnings
from torch_seg.results import write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "seg"))
    p.add_argument("--prompt", default="truck. car. paper bag.")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-detections", type=int, default=10,
                   help="boxes per image for both paths: random weights pass ~all 900 queries, real scenes a few")
    p.add_argument("--weights", default="random", choices=WEIGHTS,
                   help="auto: the checkpoints where all are present, else random weights (the record says which)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N photos of the folder")
    p.add_argument("--resize-shortest", type=int, default=None,
                   help="GroundingDINO's input size (default 800, as its demos); smaller for quick CPU runs")
    p.add_argument("--small-text-encoder", action="store_true",
                   help="a 1-layer random BERT instead of bert-base (random weights only; quick CPU runs)")
    p.add_argument("--no-direct", action="store_true", help="time the chain only, not the direct library calls")
    p.add_argument("--out", default=None, help="default: results/<device type>/segment_bench.json")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        quiet_library_warnings()
        report = measure_segmentation(
            args.image_dir, prompt=args.prompt, device=device, repeats=args.repeats,
            max_detections=args.max_detections, weights=args.weights, max_images=args.max_images,
            resize_shortest=args.resize_shortest, small_text_encoder=args.small_text_encoder,
            direct=not args.no_direct, progress=lambda line: print(line, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["command"] = "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])
    out = Path(args.out or Path("results") / device.type / "segment_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"images/s over {len(report['per_image'])} photos: {report['images_per_s_chain_folder']:.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
