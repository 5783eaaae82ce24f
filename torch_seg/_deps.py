"""Packages torch_seg needs that may be missing: one line that names the install command instead of a traceback.

`pip install "vit-sam2-lab[seg]"` brings everything but two packages that pip metadata cannot carry (see
pyproject.toml, [tool.vit-sam2-lab]): sam2, built without build isolation, and groundingdino-py with supervision,
installed without their declared dependencies. `bash scripts/setup.sh` and `bash scripts/setup.sh system` do all.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from torch_seg.errors import UserError

SEG_EXTRA = 'pip install "vit-sam2-lab[seg]"'
AFTER_EXTRA = {  # module -> the command that installs it once the [seg] extra is in
    "sam2": "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0",
    "groundingdino": "pip install --no-deps groundingdino-py==0.4.0 supervision==0.6.0",
    "supervision": "pip install --no-deps groundingdino-py==0.4.0 supervision==0.6.0",
}
# What the [seg] extra installs, by import name; checked when torch_seg is imported.
SEG_MODULES = ("torch", "torchvision", "transformers", "cv2", "pycocotools", "hydra", "iopath", "timm", "addict",
               "yapf")
PACKAGE_NAMES = {"cv2": "opencv-python-headless", "hydra": "hydra-core", "groundingdino": "groundingdino-py"}


class MissingDependency(UserError, ImportError):
    """A package torch_seg needs is not installed. A UserError (scripts print `error: <message>`, exit 2) and an
    ImportError (code that tolerates a failed import still does)."""


def _fix(module: str) -> str:
    if module in AFTER_EXTRA:
        return f"{AFTER_EXTRA[module]} (after {SEG_EXTRA}; bash scripts/setup.sh does both)"
    return SEG_EXTRA


def _raise(missing: list[str]) -> None:
    _report_one_line_if_uncaught()
    names = ", ".join(PACKAGE_NAMES.get(m, m) for m in missing)
    raise MissingDependency(f"{names} {'is' if len(missing) == 1 else 'are'} not installed: {_fix(missing[0])}")


def require_seg_extra() -> None:
    """The [seg] extra's packages are installed (found, not imported: that stays lazy)."""
    missing = [m for m in SEG_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        _raise(missing)


def require(module: str):
    """Import `module` (e.g. "sam2.build_sam"); if it or a package it needs is missing, MissingDependency."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = (error.name or module).split(".")[0]
        _raise([top])


def _report_one_line_if_uncaught() -> None:
    """Where nothing catches it (a missing package met while a script imports torch_seg), print the message as
    `error: ...` rather than a traceback. Only for this exception, only where no one has set sys.excepthook."""
    if sys.excepthook is not sys.__excepthook__:
        return

    def excepthook(kind, error, traceback):
        if issubclass(kind, MissingDependency):
            print(f"error: {error}", file=sys.stderr)
        else:
            sys.__excepthook__(kind, error, traceback)

    sys.excepthook = excepthook
