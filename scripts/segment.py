"""Text-prompted segmentation of images: GroundingDINO (or CLIPSeg) boxes -> SAM 2.1 masks.

  python scripts/segment.py --image truck.jpg --prompt "truck. wheel." --out out/
  python scripts/segment.py --image-dir photos/ --prompt "paper bag" --out out/ --sam2-model small

Writes OUT/<image stem>/overlay.png, masks/<i>.png and result.json (see README, "Text-prompted image segmentation");
--coco FILE also writes one COCO instances file for the whole run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow where it is installed

from torch_seg.cli import add_model_arguments, check_at_least, run_cli
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
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from torch_seg.images import list_images, output_names
    from torch_seg.pipeline import TextSegmenter, quiet_library_warnings
    from torch_seg.prompts import parse_prompt
    from torch_seg.seeders.base import check_thresholds

    # Prompt and numbers first: they fail before any path is looked at or any model is built.
    parse_prompt(args.prompt)
    check_at_least("--max-detections", args.max_detections, 1)
    check_thresholds(box_threshold=args.box_threshold, text_threshold=args.text_threshold)
    sources = [str(p) for p in list_images(args.image_dir)] if args.image_dir else list(args.image)
    for source in sources:  # fail fast, before minutes of model loading
        if not source.startswith(("http://", "https://")) and not Path(source).is_file():
            raise UserError(f"image not found: {source} (check the path)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose another path")
    if args.coco and Path(args.coco).is_dir():
        raise UserError(f"--coco {args.coco} is a folder: name a file, "
                        f"e.g. --coco {Path(args.coco) / 'instances.json'}")
    quiet_library_warnings()
    if args.random_weights:
        print("warning: --random-weights: the models have RANDOM weights; boxes, labels and masks are meaningless "
              "(plumbing only), and every result.json says so", file=sys.stderr)
    print(f"loading {args.seeder} + SAM 2.1 {args.sam2_model} ...", file=sys.stderr)
    segmenter = TextSegmenter(
        seeder=args.seeder, sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
        gdino_model=args.gdino_model, gdino_checkpoint=args.gdino_checkpoint, text_encoder=args.text_encoder,
        clipseg_model=args.clipseg_model, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
        max_detections=args.max_detections, device=args.device, random_weights=args.random_weights)
    failures, records = 0, []
    for source, name in tqdm(list(zip(sources, output_names(sources))), desc="images", unit="img",
                             disable=len(sources) == 1):
        try:
            record = segmenter.process_file(source, args.prompt, out, name=name)
        except UserError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        records.append(record)
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

        print(f"COCO instances of {len(records)} image(s) -> {write_coco(args.coco, records)}", file=sys.stderr)
    if failures:
        print(f"error: {failures} of {len(sources)} image(s) failed (messages above)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
