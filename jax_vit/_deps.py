"""Packages jax_vit needs that may be missing: one line that names the install command instead of a traceback.

Checked when jax_vit is imported, by finding the packages rather than importing them, so that
`import jax_vit.allocator` (run before JAX is imported) stays free of JAX.
"""
from __future__ import annotations

import importlib.util
import sys

VIT_EXTRA = 'pip install "vit-sam2-lab[vit]"'
# What the [vit] extra installs, by import name.
VIT_MODULES = ("jax", "flax", "optax", "orbax.checkpoint", "tensorflow_datasets", "absl")
PACKAGE_NAMES = {"orbax": "orbax-checkpoint", "tensorflow_datasets": "tensorflow-datasets", "absl": "absl-py"}


class MissingDependency(ImportError):
    """A package jax_vit needs is not installed; the message is one line that names the fix."""


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent of a dotted name is missing
        return False


def require_vit_extra() -> None:
    missing = [PACKAGE_NAMES.get(m.split(".")[0], m) for m in VIT_MODULES if not _found(m)]
    if missing:
        _report_one_line_if_uncaught()
        raise MissingDependency(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                                f"{VIT_EXTRA} (JAX for a GPU or TPU first: \"jax[cuda12]\", \"jax[tpu]\")")


def _report_one_line_if_uncaught() -> None:
    """Where nothing catches it (the scripts catch only their own errors), print the message as `error: ...`
    rather than a traceback. Only for this exception, only where no one has set sys.excepthook."""
    if sys.excepthook is not sys.__excepthook__:
        return

    def excepthook(kind, error, traceback):
        if issubclass(kind, MissingDependency):
            print(f"error: {error}", file=sys.stderr)
        else:
            sys.__excepthook__(kind, error, traceback)

    sys.excepthook = excepthook
