"""Requests/s and latency of scripts/serve.py's API for 1 and N concurrent clients, and the server's overhead
against TextSegmenter.segment in the same process (torch_seg/serve_bench.py). Loopback only, bounded counts.

  python scripts/bench_serve.py --out results/cpu/serve_bench.json          # random weights, a few minutes on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

from torch_seg.cli import check_at_least, run_cli
from torch_seg.results import write_json

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "seg" / "groceries.jpg"))
    p.add_argument("--prompt", default="truck. car. paper bag.")
    p.add_argument("--paired", type=int, default=4, help="direct/served pairs (one client)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--concurrent-requests", type=int, default=8, help="requests spread over the clients")
    p.add_argument("--max-detections", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "results" / "cpu" / "serve_bench.json"))
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from torch_seg.errors import UserError
    from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
    from torch_seg.serve_bench import machine, measure_service, versions

    for option in ("paired", "clients", "concurrent_requests", "max_detections"):
        check_at_least(f"--{option.replace('_', '-')}", getattr(args, option), 1)
    if not Path(args.image).is_file():
        raise UserError(f"image not found: {args.image} (check --image)")
    quiet_library_warnings()
    load_before = os.getloadavg()
    start = time.perf_counter()
    segmenter = TextSegmenter(device=args.device, random_weights=True, max_detections=args.max_detections)
    load_s = time.perf_counter() - start
    figures = measure_service(segmenter, args.image, args.prompt, paired=args.paired,
                              concurrent_requests=args.concurrent_requests, clients=args.clients,
                              log=lambda line: print(line, file=sys.stderr))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "what": "POST /segment through a real uvicorn server on loopback vs TextSegmenter.segment in the same "
                "process, one model instance; random weights (the real compute)",
        "models": "GroundingDINO Swin-T OGC (bert-base config, 800 px) + SAM 2.1 hiera tiny, random weights",
        "image": Path(args.image).name, "prompt": args.prompt, "max_detections": args.max_detections,
        "device": str(segmenter.device), "model_load_s": round(load_s, 2),
        **figures,
        "note": "p95 of a handful of requests is close to their maximum; overhead = client latency minus the model "
                "time the server reports (detect + sam_encode + sam_decode), request by request",
        "machine": machine(), "versions": versions(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "command": " ".join(["python", "scripts/bench_serve.py", *sys.argv[1:]]),
        "git_commit": commit.stdout.strip() or None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(json.dumps({k: record[k] for k in ("direct_segment", "one_client", f"{args.clients}_clients", "overhead")},
                     indent=1))
    print(f"-> {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
