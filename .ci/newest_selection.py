"""Which tests CI's second pass (the newest versions) runs: prints a pytest -m expression.

Run by the newest environment's Python with the first environment's Python as its argument. The second pass
is there to catch what newer releases break, so it leaves out what would only repeat the first pass: always
the end-to-end runs marked `once`, and the JAX-only test files (tests/conftest.py, JAX_ONLY_FILES) when every
JAX-side library has the same version in both environments.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

# What the JAX half runs on; numpy is shared by both halves, so a newer numpy reruns everything.
JAX_SIDE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "tensorflow-datasets",
            "ml-dtypes", "opt-einsum")

_PROBE = """
import json, sys
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in sys.argv[1:]}))
"""


def versions(python: str) -> dict[str, str | None]:
    done = subprocess.run([python, "-c", _PROBE, *JAX_SIDE], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(first_python: str) -> str:
    def here(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    first = versions(first_python)
    differ = [f"{name} {first[name]} -> {here(name)}" for name in JAX_SIDE if first[name] != here(name)]
    if differ:
        print(f"newest pass: JAX side differs ({', '.join(differ)}): the whole suite but `once`", file=sys.stderr)
        return "not once"
    print("newest pass: the JAX-side libraries equal the first pass's: leaving out `once` and `jax_only`",
          file=sys.stderr)
    return "not once and not jax_only"


if __name__ == "__main__":
    print(main(sys.argv[1]))
