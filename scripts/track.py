"""Text-prompted video segmentation: the prompted objects' masks on every frame, each with a stable id.

  python scripts/track.py --video clip.mp4 --prompt "child" --out out/clip
  python scripts/track.py --video frames/ --prompt "child. dog." --out out/ --redetect-every 10 --prompt-frame 5

Writes OUT/masks/<frame>.png (uint16 label images: 0 background, else the object id), OUT/overlay.mp4 and
OUT/tracks.json (see README, "Text-prompted video segmentation").
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow where it is installed

from torch_seg.cli import add_model_arguments, check_at_least, run_cli
from torch_seg.video.tracking import DEFAULT_MATCH_IOU
from torch_seg.video.propagation import DEFAULT_MAX_OBJECTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, metavar="PATH", help="an mp4 (any video OpenCV reads) or a folder of frames")
    p.add_argument("--prompt", required=True, help='objects to track, phrases separated by "." e.g. "child. dog."')
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced only when the run succeeds)")
    p.add_argument("--prompt-frame", type=int, default=0, metavar="K", help="key frame to detect on (default 0)")
    p.add_argument("--redetect-every", type=int, metavar="N",
                   help="re-run the detector every N frames after the key frame and add objects not tracked yet")
    p.add_argument("--max-frames", type=int, metavar="N", help="use only the first N frames")
    p.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS, help="most objects tracked at once")
    p.add_argument("--match-iou", type=float, default=DEFAULT_MATCH_IOU,
                   help="box IoU at which a re-detected box counts as an object already tracked")
    add_model_arguments(p)
    p.add_argument("--offload-video-to-cpu", action="store_true",
                   help="keep the decoded frames in CPU memory (long clips on a GPU; little speed cost)")
    p.add_argument("--offload-state-to-cpu", action="store_true",
                   help="keep SAM 2's per-frame memory in CPU memory (longer clips still; some speed cost)")
    p.add_argument("--vos-optimized", action="store_true",
                   help="torch.compile SAM 2 fully (CUDA; minutes of compiling on first use, faster after)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from torch_seg.video.run import summary, track_video

    # track_video checks the other options before anything heavy; --max-frames only when it opens the video,
    # after the checkpoints are found, so a missing checkpoint would hide it.
    check_at_least("--max-frames", args.max_frames, 1)
    record = track_video(
        args.video, args.prompt, args.out, prompt_frame=args.prompt_frame, redetect_every=args.redetect_every,
        max_frames=args.max_frames, sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
        seeder=args.seeder, gdino_model=args.gdino_model, gdino_checkpoint=args.gdino_checkpoint,
        text_encoder=args.text_encoder, clipseg_model=args.clipseg_model, box_threshold=args.box_threshold,
        text_threshold=args.text_threshold, max_objects=args.max_objects, match_iou=args.match_iou,
        device=args.device, random_weights=args.random_weights, offload_video_to_cpu=args.offload_video_to_cpu,
        offload_state_to_cpu=args.offload_state_to_cpu, vos_optimized=args.vos_optimized)
    print(summary(record, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
