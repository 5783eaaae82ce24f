"""Serve text-prompted segmentation over HTTP: a web page at / and a JSON API (POST /segment, GET /health).

  python scripts/serve.py                                   # http://127.0.0.1:7860
  python scripts/serve.py --random-weights --examples ../shared/data/seg   # no checkpoints: plumbing only
  curl -F image=@photo.jpg -F prompt="truck. wheel." http://127.0.0.1:7860/segment

The models (the same options as segment.py) are built once when the server starts; requests are answered one
at a time by that one model instance, the others wait their turn (see torch_seg/server.py).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow where it is installed

from torch_seg.cli import add_model_arguments, check_at_least, run_cli
from torch_seg.seeders import DEFAULT_MAX_DETECTIONS
from torch_seg.server import DEFAULT_HOST, DEFAULT_PORT, ServerLimits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    p.add_argument("--max-detections", type=int, default=DEFAULT_MAX_DETECTIONS,
                   help="default and most objects per request")
    p.add_argument("--max-upload-mb", type=float, default=ServerLimits.max_upload_bytes / 2**20,
                   help="largest request body accepted")
    p.add_argument("--request-timeout", type=float, default=ServerLimits.request_timeout_s, metavar="SECONDS",
                   help="answer 504 when a request has not finished in this time (its wait in the queue included)")
    p.add_argument("--max-queue", type=int, default=ServerLimits.max_pending,
                   help="requests waiting or running at once; more get 503")
    p.add_argument("--examples", metavar="DIR", help="offer this folder's images as examples on the page")
    add_model_arguments(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from torch_seg.errors import UserError
    from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
    from torch_seg.seeders.base import check_thresholds
    from torch_seg.server import bind, create_app, serve

    check_at_least("--max-detections", args.max_detections, 1)
    check_at_least("--max-queue", args.max_queue, 1)
    check_thresholds(box_threshold=args.box_threshold, text_threshold=args.text_threshold)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {args.port}")
    if not (args.max_upload_mb > 0 and args.request_timeout > 0):
        raise UserError("--max-upload-mb and --request-timeout must be positive")
    quiet_library_warnings()
    limits = ServerLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), request_timeout_s=args.request_timeout,
                          max_pending=args.max_queue, max_detections=args.max_detections)
    build = functools.partial(
        TextSegmenter, seeder=args.seeder, sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
        gdino_model=args.gdino_model, gdino_checkpoint=args.gdino_checkpoint, text_encoder=args.text_encoder,
        clipseg_model=args.clipseg_model, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
        max_detections=args.max_detections, device=args.device, random_weights=args.random_weights)
    app = create_app(build, random_weights=args.random_weights, limits=limits, examples_dir=args.examples)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if args.random_weights:
        print("warning: --random-weights: the models have RANDOM weights; boxes, labels and masks are meaningless "
              "(plumbing only), and every answer says so", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can use the server (no authentication)",
              file=sys.stderr)
    print(f"listening on http://{host}:{port} (page /, API POST /segment, GET /health); loading {args.seeder} + "
          f"SAM 2.1 {args.sam2_model} ({'RANDOM WEIGHTS' if args.random_weights else 'checkpoints'}) ...",
          file=sys.stderr)
    return serve(app, sock)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
