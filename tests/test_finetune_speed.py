"""The fine-tuning speed benchmark: our JAX step against timm's own ViT on the same weights, one JSON report."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.torchvision_compat import import_torchvision

import_torchvision()  # timm imports torchvision, which needs its op schemas on the CPU torch build
pytest.importorskip("timm")
_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark_script_finetune", _SCRIPT)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
benchmark_main = _module.main


def test_both_sides_start_from_timms_weights_read_through_our_loader():
    from benchmarks.finetune_speed import finetune_setup

    config, model, params = finetune_setup("vit_tiny_patch16_224", preset="finetune-sgd", overrides=None,
                                           batch_size=4, resolution=32)
    assert (config.width, config.depth, config.num_heads, config.patch_size, config.input_size) == (192, 12, 3, 16, 32)
    assert config.optimizer == "sgd" and config.input_norm == "inception" and config.image_size == 32
    state = model.state_dict()
    np.testing.assert_array_equal(params["blocks"][3]["attention"]["qkv"]["kernel"],
                                  state["blocks.3.attn.qkv.weight"].numpy().T)
    np.testing.assert_array_equal(params["pos_embed"], state["pos_embed"].numpy())
    assert not params["head"]["kernel"].any() and not state["head.weight"].any()  # both heads zero


def test_the_finetune_benchmark_writes_jax_and_timm_figures_and_their_ratio(tmp_path, capsys):
    out = tmp_path / "ft.json"
    code = benchmark_main(["--timm", "vit_tiny_patch16_224", "--resolution", "32", "--batch-size", "4", "--steps", "1",
                           "--repeats", "2", "--warmup-steps", "0", "--frameworks", "jax,torch", "--out", str(out),
                           "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "vit-finetune-speed/1" and report["settings"]["timm_architecture"] == "vit_tiny_patch16_224"
    assert report["settings"]["resolution"] == 32 and report["versions"]["timm"]
    assert set(report["results"]) == {"jax", "torch"} and "jax/torch" in report["ratios"]
    for result in report["results"].values():
        assert len(result["step_ms_all"]) == 2 and result["images_per_s"] > 0 and np.isfinite(result["final_loss"])
    assert "jax/torch:" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/tmp"], "--data-dir (the epoch timing) is not offered with --timm"),
    (["--config", "tiny"], "choose a fine-tuning preset"),
    (["--resolution", "40"], "patch_size 16 does not divide resolution 40"),
])
def test_the_finetune_benchmark_refuses_bad_options_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "ft.json"
    assert benchmark_main(["--timm", "vit_tiny_patch16_224", "--out", str(out), "--no-progress", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and not out.exists()
