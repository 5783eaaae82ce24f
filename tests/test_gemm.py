"""benchmarks/gemm.py: the dense layers' matmuls by role, JAX against PyTorch, with its refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gemm
from jax_vit.configs import get_config

ROOT = Path(__file__).resolve().parents[1]
# A narrow model: the tool's machinery is under test, not the kernels' speed.
SMALL = ["--config", "tiny", "--set", "width=32", "--set", "num_heads=2", "--set", "mlp_dim=64",
         "--batch-size", "4", "--repeats", "1", "--calls", "1"]


def run_tool(*args):
    # A child process: --cores pins the process it runs in, which must not be pytest's.
    return subprocess.run([sys.executable, "-m", "benchmarks.gemm", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_layer_shapes_follow_the_config():
    config = get_config("seed-384x8", {})
    assert gemm.layer_shapes(config) == {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536),
                                         "fc2": (1536, 384)}


def test_summary_is_the_ratio_of_summed_times():
    results = [{"role": "forward", "jax_ms": 3.0, "torch_ms": 1.0},
               {"role": "forward", "jax_ms": 1.0, "torch_ms": 3.0},
               {"role": "weight gradient", "jax_ms": 2.0, "torch_ms": 1.0}]
    ratios = gemm.summary(results)
    assert ratios["forward"] == pytest.approx(1.0)
    assert ratios["weight gradient"] == pytest.approx(2.0)
    assert ratios["input gradient"] != ratios["input gradient"]  # no products of that role: NaN, not 0 or 1
    assert ratios["all"] == pytest.approx(6.0 / 5.0)


def test_one_core_run_times_every_product_and_writes_its_record(tmp_path):
    out = tmp_path / "gemm.json"
    proc = run_tool(*SMALL, "--cores", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["schema"] == gemm.SCHEMA
    assert report["settings"]["cores"] == 1 and report["machine"]["torch_threads"] == 1
    tokens = get_config("tiny", {}).num_patches + 1
    micro = report["settings"]["micro_batches"]
    assert report["settings"]["rows"] == -(-4 // micro) * tokens
    results = report["results"]
    assert [(r["layer"], r["role"]) for r in results] == [(layer, role) for layer in ("qkv", "proj", "fc1", "fc2")
                                                          for role in gemm.ROLES]
    for r in results:
        assert r["jax_ms"] > 0 and r["torch_ms"] > 0
        assert r["jax_gflops"] == pytest.approx(2 * r["rows"] * r["in"] * r["out"] / r["jax_ms"] / 1e6)
        assert r["jax_library"] in ("ynnpack", "xla dot (eigen)")
    assert report["summary"]["all"] == pytest.approx(sum(r["jax_ms"] for r in results)
                                                     / sum(r["torch_ms"] for r in results))
    assert "jax/torch time, all:" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--cores", "0"], "--cores 0"),
    (["--cores", "100000"], "--cores 100000"),
    (["--batch-size", "0"], "at least 1"),
    (["--config", "no-such-preset"], "no-such-preset"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "gemm.json"
    proc = run_tool(*SMALL, *args, "--out", str(out))
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().startswith("error:")
    assert not out.exists()
