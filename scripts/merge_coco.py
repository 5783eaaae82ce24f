"""One COCO instances file from the per-worker files of a segment.py run (or rebuilt from its result folders).

  python scripts/merge_coco.py out/instances.worker-*.json --out out/instances.json
  python scripts/merge_coco.py --results out/ --out out/instances.json

Images and annotations get fresh ids, categories are unified by name, images are sorted by their source (so
the file does not depend on how many workers there were). Files from two runs, images in two files, or a
missing worker's file (instances.worker-K-of-N.json for some K) are refused. --results DIR instead reads every
finished result.json under DIR: the way back when a worker's COCO file is lost.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch_seg.cli import run_cli
from torch_seg.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="the workers' COCO files (segment.py --coco)")
    p.add_argument("--results", metavar="DIR", help="rebuild from the finished result folders under DIR instead")
    p.add_argument("--out", required=True, metavar="FILE", help="the merged COCO instances file (written atomically)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from torch_seg.coco import coco_instances, merge_coco_files
    from torch_seg.resume import finished_image_folders
    from torch_seg.results import write_json

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name a file, e.g. --out {out / 'instances.json'}")
    if bool(args.files) == bool(args.results):
        raise UserError("pass either the workers' COCO files or --results DIR (not both, not neither)")
    if args.files:
        if any(Path(f).resolve() == out.resolve() for f in args.files):
            raise UserError(f"--out {out} is one of the files to merge: choose another --out")
        merged = merge_coco_files(args.files)
        what = f"{len(set(args.files))} file(s)"
    else:
        results = Path(args.results)
        if not results.is_dir():
            raise UserError(f"--results {results} is not a folder: pass segment.py's --out folder")
        records, unfinished = finished_image_folders(results)
        if unfinished:
            print(f"warning: {len(unfinished)} folder(s) in {results} hold no finished result.json and are left out "
                  f"(e.g. {unfinished[0]}): rerun segment.py to finish them", file=sys.stderr)
        merged = coco_instances(records)
        what = f"{len(records)} result folder(s)"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, merged)
    note = "  [RANDOM WEIGHTS]" if merged["info"]["random_weights"] else ""
    print(f"{len(merged['images'])} image(s), {len(merged['annotations'])} annotation(s), "
          f"{len(merged['categories'])} categories from {what} -> {out}{note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
