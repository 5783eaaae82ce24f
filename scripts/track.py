"""Text-prompted video segmentation: the prompted objects' masks on every frame, each with a stable id.

  python scripts/track.py --video clip.mp4 --prompt "child" --out out/clip
  python scripts/track.py --video frames/ --prompt "child. dog." --out out/ --redetect-every 10 --prompt-frame 5
  torchrun --nproc-per-node 8 scripts/track.py --video-dir clips/ --prompt "child" --out out/

Writes OUT/masks/<frame>.png (uint16 label images: 0 background, else the object id), OUT/overlay.mp4 and
OUT/tracks.json (see README, "Text-prompted video segmentation"); for several videos (--video a.mp4 b.mp4, or
--video-dir) the same into OUT/<video name>/. Videos whose finished output (same settings) is already there
are skipped (--redo recomputes them); --num-workers/--worker-index (or torchrun's or SLURM's environment) split
the videos over workers (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow where it is installed

from pathlib import Path

from torch_seg.cli import add_model_arguments, add_worker_arguments, check_at_least, run_cli
from torch_seg.errors import UserError
from torch_seg.video.tracking import DEFAULT_MATCH_IOU
from torch_seg.video.propagation import DEFAULT_MAX_OBJECTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", nargs="+", metavar="PATH",
                        help="an mp4 (any video OpenCV reads) or a folder of frames; several go to OUT/<name>/")
    source.add_argument("--video-dir", metavar="DIR",
                        help="track every video file and frame folder in DIR, each into OUT/<name>/")
    p.add_argument("--prompt", required=True, help='objects to track, phrases separated by "." e.g. "child. dog."')
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (replaced only when the run succeeds); OUT/<name>/ per video for several")
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
    add_worker_arguments(p, "videos")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from torch_seg.images import output_names
    from torch_seg.resume import finished_tracking
    from torch_seg.video.frames import list_videos
    from torch_seg.video.run import TrackingJob, summary
    from torch_seg.workers import worker_device, worker_share

    # TrackingJob checks the other options before anything heavy; --max-frames only when it opens a video,
    # after the checkpoints are found, so a missing checkpoint would hide it.
    check_at_least("--max-frames", args.max_frames, 1)
    share = worker_share(args.num_workers, args.worker_index)
    videos = [str(v) for v in list_videos(args.video_dir)] if args.video_dir else list(args.video)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose another path")
    # One --video writes into OUT itself, as it always has; several get OUT/<name>/, names over the whole list
    # (then the share), so a video's folder never depends on how the work is split.
    single = args.video is not None and len(args.video) == 1
    outs = [out] if single else [out / name for name in output_names(videos)]
    mine = share.take(list(zip(videos, outs)))
    if share.num_workers > 1:
        print(f"{share.describe()}: {len(mine)} of {len(videos)} video(s)", file=sys.stderr)
    job = TrackingJob(
        args.prompt, prompt_frame=args.prompt_frame, redetect_every=args.redetect_every, max_frames=args.max_frames,
        sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint, seeder=args.seeder,
        gdino_model=args.gdino_model, gdino_checkpoint=args.gdino_checkpoint, text_encoder=args.text_encoder,
        clipseg_model=args.clipseg_model, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
        max_objects=args.max_objects, match_iou=args.match_iou, device=worker_device(args.device, share.local_rank),
        random_weights=args.random_weights, offload_video_to_cpu=args.offload_video_to_cpu,
        offload_state_to_cpu=args.offload_state_to_cpu, vos_optimized=args.vos_optimized)
    todo = mine if args.redo else [(video, folder) for video, folder in mine
                                   if finished_tracking(folder, job.settings(video)) is None]
    if len(todo) < len(mine):
        print(f"skipped {len(mine) - len(todo)} already done (finished output with the same settings in {out}; "
              f"--redo recomputes them)", file=sys.stderr)
    failures = 0
    for video, folder in todo:
        try:
            record = job.track(video, folder)
        except UserError as e:
            if single:
                raise
            print(f"error: {video}: {e}", file=sys.stderr)
            failures += 1
            continue
        print(summary(record, folder))
    if failures:
        print(f"error: {failures} of {len(todo)} video(s) failed (messages above)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
