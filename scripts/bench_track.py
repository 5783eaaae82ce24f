"""Frames/s of SAM 2.1 video propagation (random weights: the real compute) on real frames; saves JSON.

  python scripts/bench_track.py                                   # CPU: tiny, 8 bedroom frames
  python scripts/bench_track.py --device cuda --models tiny base_plus --num-frames 40 --out results/gpu/track_bench.json
  python scripts/bench_track.py --device cuda --models tiny --vos-optimized   # full torch.compile (as the paper)
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from torch_seg.checkpoints import SAM2_MODELS
from torch_seg.device import DEVICE_CHOICES
from torch_seg.errors import UserError
from torch_seg.results import write_json

DEFAULT_FRAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "seg" / "bedroom"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(DEFAULT_FRAMES), help="mp4 or frame folder (default: the bedroom frames)")
    p.add_argument("--models", nargs="+", default=["tiny"], choices=list(SAM2_MODELS))
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--objects", type=int, default=1, help="boxes prompted on frame 0")
    p.add_argument("--device", default="cpu", choices=list(DEVICE_CHOICES))
    p.add_argument("--vos-optimized", action="store_true", help="sam2's fully torch.compiled predictor (CUDA)")
    p.add_argument("--warmup-passes", type=int, help="untimed passes first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--out", default="results/cpu/track_bench.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from torch_seg.device import resolve_device
        from torch_seg.pipeline import quiet_library_warnings
        from torch_seg.video.bench import machine_record, measure_propagation

        quiet_library_warnings()
        device = resolve_device(args.device)
        warmup = args.warmup_passes if args.warmup_passes is not None else (1 if device.type == "cuda" else 0)
        machine = machine_record(device)
        runs = []
        for model in args.models:
            run = measure_propagation(args.video, model, num_frames=args.num_frames, num_objects=args.objects,
                                      device=device, vos_optimized=args.vos_optimized, warmup_passes=warmup)
            print(f"{run['model']} on {device} ({run['dtype']}), {run['frame_size'][0]}x{run['frame_size'][1]}, "
                  f"{run['objects']} object(s): {run['frames_per_s']:.3f} frames/s "
                  f"(median {run['median_frame_ms']:.0f} ms/frame over {run['tracked_frames']} frames)")
            runs.append(run)
        machine["load_average_after"] = __import__("os").getloadavg()
        record = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                  "random_weights": True, "machine": machine, "runs": runs}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, record)
        print(f"saved {out}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
