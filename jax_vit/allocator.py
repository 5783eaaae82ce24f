"""Run the JAX entry points under tcmalloc when it is installed.

XLA:CPU gives a training step its temporaries as large host buffers (XLA's estimate for `seed-256x6` at
batch 128: 1.6 GiB). glibc's malloc serves any block over 32 MiB with a fresh `mmap` and unmaps it when
freed, so every step page-faults the whole buffer in again: about 450 000 minor faults a step, a quarter of
its CPU time spent in the kernel. tcmalloc keeps freed pages for reuse; on the 2-core CPU of README
"Speed: JAX vs PyTorch" the step went from about 1330 to 915 ms. The preload has to be in place before the
process starts, so the scripts re-execute themselves once with it (`LD_PRELOAD`).

Off with `VIT_NO_TCMALLOC=1`; nothing happens where tcmalloc is not installed (Debian/Ubuntu:
`apt-get install libtcmalloc-minimal4`) or the process already preloads it.
"""
from __future__ import annotations

import os
import sys

OPT_OUT = "VIT_NO_TCMALLOC"
LIBRARY_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def find_tcmalloc(dirs=LIBRARY_DIRS) -> str | None:
    for directory in dirs:
        for name in LIBRARY_NAMES:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
    return None


def active_allocator(environ=os.environ) -> str:
    """'tcmalloc' when this process was started with it preloaded, else 'system' (recorded in results)."""
    return "tcmalloc" if "tcmalloc" in environ.get("LD_PRELOAD", "") else "system"


def reexec_under_tcmalloc(argv: list[str] | None = None, environ=os.environ, dirs=LIBRARY_DIRS, execv=os.execv) -> bool:
    """Replace this process with itself, tcmalloc preloaded. Returns False (and does nothing) where it is
    opted out of, not on Linux, preloaded already or not installed; on success it does not return."""
    if environ.get(OPT_OUT) == "1" or not sys.platform.startswith("linux") or active_allocator(environ) == "tcmalloc":
        return False
    library = find_tcmalloc(dirs)
    if library is None:
        return False
    environ["LD_PRELOAD"] = os.pathsep.join(filter(None, [library, environ.get("LD_PRELOAD")]))
    # orig_argv keeps the interpreter's own options (-u, -X ..., -W ...) along with the script and its arguments.
    execv(sys.executable, [sys.executable, *(sys.orig_argv[1:] if argv is None else argv)])
    return True
