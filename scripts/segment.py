"""Text-prompted segmentation of images: GroundingDINO (or CLIPSeg) boxes -> SAM 2.1 masks.

  python scripts/segment.py --image truck.jpg --prompt "truck. wheel." --out out/
  python scripts/segment.py --image-dir photos/ --prompt "paper bag" --out out/ --sam2-model small

  torchrun --nproc-per-node 8 scripts/segment.py --image-dir photos/ --prompt "car" --out out/ --coco out/instances.json

Writes OUT/<image stem>/overlay.png, masks/<i>.png and result.json (see README, "Text-prompted image segmentation");
--coco FILE also writes one COCO instances file for the whole run. Images whose finished result (same settings)
is already in OUT are skipped (--redo recomputes them). With several workers (--num-workers/--worker-index, or
torchrun's or SLURM's environment) each does its share and writes FILE's stem + .worker-K-of-N.json; merge them
with scripts/merge_coco.py (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow where it is installed

from torch_seg.cli import add_model_arguments, add_worker_arguments, check_at_least, run_cli
from torch_seg.errors import UserError
from torch_seg.seeders import DEFAULT_MAX_DETECTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", metavar="PATH", help="image file(s) or http(s) URL(s)")
    source.add_argument("--image-dir", metavar="DIR", help="segment every image in this folder")
    p.add_argument("--prompt", required=True, help='objects to find, phrases separated by "." e.g. "truck. wheel."')
    p.add_argument("--out", required=True, metavar="DIR", help="results go to DIR/<image stem>/")
    p.add_argument("--max-detections", type=int, default=DEFAULT_MAX_DETECTIONS, help="keep the best N per image")
    p.add_argument("--coco", metavar="FILE", help="also write one COCO instances file (RLE masks) for every image")
    add_model_arguments(p)
    add_worker_arguments(p, "images")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from torch_seg.coco import worker_coco_path
    from torch_seg.images import list_images, output_names
    from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
    from torch_seg.prompts import parse_prompt
    from torch_seg.resume import finished_image_result, image_settings
    from torch_seg.seeders.base import check_thresholds
    from torch_seg.workers import worker_device, worker_share

    # Prompt and numbers first: they fail before any path is looked at or any model is built.
    parse_prompt(args.prompt)
    check_at_least("--max-detections", args.max_detections, 1)
    check_thresholds(box_threshold=args.box_threshold, text_threshold=args.text_threshold)
    share = worker_share(args.num_workers, args.worker_index)
    sources = [str(p) for p in list_images(args.image_dir)] if args.image_dir else list(args.image)
    # Names over the whole list, then the share: an image's folder never depends on how the work is split.
    mine = share.take(list(zip(sources, output_names(sources))))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose another path")
    if args.coco and Path(args.coco).is_dir():
        raise UserError(f"--coco {args.coco} is a folder: name a file, "
                        f"e.g. --coco {Path(args.coco) / 'instances.json'}")
    if share.num_workers > 1:
        print(f"{share.describe()}: {len(mine)} of {len(sources)} image(s)", file=sys.stderr)
    finished: dict[str, dict | None] = {}  # name -> its record, kept only where --coco needs it
    for source, name in [] if args.redo else mine:
        record = finished_image_result(out / name, image_settings(args, source))
        if record is not None:
            finished[name] = record if args.coco else None
    todo = [(source, name) for source, name in mine if name not in finished]
    if finished:
        replaced = sum((out / name).exists() for _, name in todo)
        print(f"skipped {len(finished)} already done (finished results with the same settings in {out}; --redo "
              f"recomputes them)" + (f"; {replaced} made with other settings will be replaced" if replaced else ""),
              file=sys.stderr)
    for source, _ in todo:  # fail fast, before minutes of model loading
        if not source.startswith(("http://", "https://")) and not Path(source).is_file():
            raise UserError(f"image not found: {source} (check the path)")
    failures, computed = 0, {}
    if todo:
        quiet_library_warnings()
        if args.random_weights:
            print("warning: --random-weights: the models have RANDOM weights; boxes, labels and masks are "
                  "meaningless (plumbing only), and every result.json says so", file=sys.stderr)
        print(f"loading {args.seeder} + SAM 2.1 {args.sam2_model} ...", file=sys.stderr)
        segmenter = TextSegmenter(
            seeder=args.seeder, sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
            gdino_model=args.gdino_model, gdino_checkpoint=args.gdino_checkpoint, text_encoder=args.text_encoder,
            clipseg_model=args.clipseg_model, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
            max_detections=args.max_detections, device=worker_device(args.device, share.local_rank),
            random_weights=args.random_weights)
        print(f"on {segmenter.device}: {segmenter.autocast.describe()}", file=sys.stderr)
        for source, name in tqdm(todo, desc="images", unit="img", disable=len(todo) == 1):
            try:
                record = segmenter.process_file(source, args.prompt, out, name=name)
            except UserError as e:
                tqdm.write(f"error: {e}", file=sys.stderr)
                failures += 1
                continue
            if args.coco:
                computed[name] = record
            n = record["num_detections"]
            found = ", ".join(sorted({d["label"] for d in record["detections"]})) or "nothing"
            line = f"{name}: {n} object(s) ({found}) in {record['timings_ms']['total'] / 1e3:.1f} s -> {out / name}"
            if n == 0:
                line += (f"  [no object scored above --box-threshold {args.box_threshold} for {args.prompt!r}; "
                         f"try a lower --box-threshold]")
            if args.random_weights:
                line += "  [RANDOM WEIGHTS]"
            tqdm.write(line)
    if args.coco:
        from torch_seg.coco import write_coco

        # The whole share in its order, skipped images' records read back from their result.json.
        records = [computed[name] if name in computed else finished[name]
                   for _, name in mine if name in computed or name in finished]
        path = write_coco(worker_coco_path(args.coco, share), records)
        print(f"COCO instances of {len(records)} image(s) -> {path}", file=sys.stderr)
    if failures:
        print(f"error: {failures} of {len(todo)} image(s) failed (messages above)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
