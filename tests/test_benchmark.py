"""The speed benchmark runs every framework side by side and writes one complete, honest JSON report."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.speed import SCHEMA, parse_frameworks

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark_script", _SCRIPT)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
benchmark_main = _module.main

# A one-block, narrow ViT: the benchmark's machinery is under test here, not the model's speed.
SMALL_MODEL = ["--config", "tiny", "--set", "depth=1", "--set", "width=32", "--set", "num_heads=2",
               "--set", "mlp_dim=64"]


def test_benchmark_writes_steps_epochs_and_ratios_for_jax_and_torch(tmp_path, capsys, cifar10_sample_dir):
    out = tmp_path / "results" / "bench.json"
    code = benchmark_main(SMALL_MODEL + [
        "--batch-size", "512", "--steps", "1", "--repeats", "3", "--warmup-steps", "0",
        "--frameworks", "torch,jax", "--data-dir", str(cifar10_sample_dir), "--loader-workers", "0",
        "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left behind

    assert report["schema"] == SCHEMA
    assert report["settings"]["preset"] == "tiny" and report["model"]["config"]["depth"] == 1
    assert set(report["results"]) == {"jax", "torch"}
    train_images = report["settings"]["dataset"]["train_images"]
    for name, result in report["results"].items():
        assert len(result["step_ms_all"]) == 3, name  # one figure per interleaved repetition
        assert result["step_ms_median"] == pytest.approx(np.median(result["step_ms_all"]))
        assert result["images_per_s"] == pytest.approx(512 / (result["step_ms_median"] / 1e3))
        assert result["first_step_s"] > 0
        # Every full batch of the real training set, once (the last, partial batch is dropped by both).
        assert result["epoch"]["images"] == train_images // 512 * 512 and result["epoch"]["seconds_median"] > 0
        assert result["mfu"] is None  # no known peak for a CPU
    ratio = report["results"]["jax"]["images_per_s"] / report["results"]["torch"]["images_per_s"]
    assert report["ratios"]["jax/torch"] == pytest.approx(ratio)
    assert report["model"]["train_flops_per_image"] == 3 * report["model"]["forward_flops_per_image"]
    assert report["load"]["before"]["loadavg"] and report["versions"]["torch"].startswith("2.")
    assert "jax/torch:" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--frameworks", "jax,tensorflow"], "--frameworks"),
    (["--config", "huge"], "unknown preset"),
    (["--set", "depth=two"], "expected a int"),
    (["--data-dir", "/nonexistent/cifar"], "does not exist"),
    # The PyTorch baseline has none of best's recipe pieces: the two sides would time different work.
    (["--config", "best", "--frameworks", "jax,torch"], "ema_decay, mixup_alpha, cutmix_alpha run in the JAX step only"),
])
def test_cli_rejects_bad_options_in_one_line_without_output(tmp_path, capsys, args, message):
    out = tmp_path / "bench.json"
    assert benchmark_main(args + ["--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not out.exists()


def test_cli_rejects_a_batch_larger_than_the_training_set(tmp_path, capsys, cifar10_sample_dir):
    out = tmp_path / "bench.json"
    args = ["--batch-size", "100000", "--data-dir", str(cifar10_sample_dir), "--out", str(out)]
    assert benchmark_main(args) == 2
    assert "lower it" in capsys.readouterr().err
    assert not out.exists()


def test_frameworks_are_parsed_once_each_in_order():
    assert parse_frameworks("torch, jax,torch") == ["torch", "jax"]


def test_jax_and_torch_on_different_kinds_of_device_are_refused(monkeypatch):
    import torch

    from benchmarks.speed import BenchmarkError, check_comparable
    from jax_vit.configs import get_config

    check_comparable(get_config("seed-384x8"), ["jax", "torch"])  # both on this CPU: comparable
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as CUDA torch beside a CPU-only jax
    with pytest.raises(BenchmarkError, match="JAX runs on cpu but PyTorch on gpu"):
        check_comparable(get_config("seed-384x8"), ["jax", "torch"])
    check_comparable(get_config("seed-384x8"), ["jax"])  # JAX alone compares nothing


def test_cpu_kind_names_vendor_family_model_and_the_vector_extensions():
    from benchmarks.host import cpu_kind

    zen3 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu sse2 avx fma avx2 vaes\n\nprocessor\t: 1\nflags\t\t: avx512f amx_bf16\n")
    assert cpu_kind(zen3) == {"vendor": "AuthenticAMD", "family": "25", "model": "1", "isa": ["avx2", "fma"]}
    spr = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx2 avx512f avx512_fp16 amx_tile amx_bf16\n"
    assert cpu_kind(spr)["isa"] == ["avx2", "avx512f", "avx512_fp16", "amx_bf16", "amx_tile"]
    assert cpu_kind("") == {"isa": []}


@pytest.mark.parametrize("module", ["breakdown", "op_breakdown"])
def test_profile_tools_print_one_row_per_part_with_both_frameworks(module, capsys):
    import importlib

    importlib.import_module(f"benchmarks.{module}").main(
        ["--config", "tiny", "--batch-size", "4", "--steps", "1", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if "jax/torch time" in line]
    assert len(rows) == (3 if module == "breakdown" else 8)
    assert all(float(row.split()[-1]) > 0 for row in rows)
