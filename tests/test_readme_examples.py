"""The README's Python API examples run as written, so the front page cannot drift from the code.

Each ```python block of README.md runs in its own process, from a folder whose sibling `shared` is the real
../shared (the examples use ../shared/data, as a checkout beside it does), so nothing is written into the repo.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_an_api_example_for_each_half():
    assert any("from jax_vit import" in b for b in BLOCKS) and any("from torch_seg import" in b for b in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.split("\n")[0].split()[1] for b in BLOCKS])
def test_readme_example_runs(block, tmp_path, seg_dir, cifar10_sample_dir):
    (tmp_path / "shared").symlink_to(seg_dir.parents[1], target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(README.parent), "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    if "jax_vit" in block:
        assert 0.1 < float(last) <= 1.0  # above chance after 3 epochs on the real sample
        assert (work / "runs" / "api-tiny" / "summary.json").is_file()
    else:
        count, shape = re.match(r"(\d+) .*\((\d+, 1200, 1800)\)$", last).groups()
        assert int(count) > 0 and shape.startswith(count)
