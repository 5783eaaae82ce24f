"""Fine-tuning a pretrained ViT with the trainer's own loop: scripts/finetune.py end to end on the real CIFAR-10
sample from a checkpoint our trainer wrote (tiny, trained on Fashion-MNIST: one channel, a 4x4 patch grid), its
recipe pieces (momentum SGD, layer-wise decay, a schedule in steps, the in-step resize) and its one-line errors.
"""
import dataclasses
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jax_vit import checkpoints
from jax_vit.configs import FINETUNE_PRESETS, check_config, get_config
from jax_vit.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH = 200, 64  # 79 steps an epoch on the 5085 images: epochs of 79, 79 and a short 42
ARGS = ["--dataset", "cifar10", "--steps", STEPS, "--batch-size", BATCH, "--resolution", 48, "--no-progress",
        "--set", "learning_rate=0.01"]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"finetune_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrained_run(fashion_mnist_dir, tmp_path_factory):
    """`tiny` (2 blocks) trained by our own trainer for 2 epochs on 6400 Fashion-MNIST images (about 10 s)."""
    from jax_vit.train import train_and_evaluate

    full = load_dataset("fashion_mnist", fashion_mnist_dir)
    subset = dataclasses.replace(full, train_images=full.train_images[:6400], train_labels=full.train_labels[:6400],
                                 test_images=full.test_images[:512], test_labels=full.test_labels[:512])
    workdir = tmp_path_factory.mktemp("fashion") / "tiny"
    config = get_config("tiny", {"depth": 2, "epochs": 2, "warmup_epochs": 0.5})
    train_and_evaluate(config, subset, workdir, progress=False, devices=jax.local_devices()[:1])
    return workdir


def _argv(pretrained, cifar10_sample_dir, workdir, *extra):
    return [str(a) for a in ["--pretrained", pretrained, "--data-dir", cifar10_sample_dir, "--workdir", workdir,
                             *ARGS, *extra]]


def _final_state(workdir):
    from jax_vit.evaluate import load_run_config
    from jax_vit.train_step import make_mesh, make_recipe

    config, record = load_run_config(workdir)
    recipe = make_recipe(config, record["train_size"] // config.batch_size)
    manager = checkpoints.make_manager(workdir, read_only=True)
    state = jax.device_get(checkpoints.restore(manager, recipe, make_mesh(), "latest"))
    manager.close()
    return state


def test_finetuning_our_own_checkpoint_learns_resumes_after_a_kill_exactly_and_evaluates(
        pretrained_run, cifar10_sample_dir, tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _script("finetune").main(_argv(pretrained_run, cifar10_sample_dir, whole)) == 0
    out = capsys.readouterr()
    assert "head (10 classes) replaced by a zero-initialised one" in out.err + out.out
    assert "4x4 grid resized to 6x6" in out.err + out.out and "from 1 to 3 input channels" in out.err + out.out

    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "finetune.py"),
                                *_argv(pretrained_run, cifar10_sample_dir, killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (killed / "metrics.jsonl").exists() or not (killed / "metrics.jsonl").read_text().strip():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the first epoch never finished"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 1 <= len((killed / "metrics.jsonl").read_text().splitlines()) < 3
    assert _script("finetune").main(_argv(pretrained_run, cifar10_sample_dir, killed, "--resume")) == 0
    capsys.readouterr()

    a, b = _final_state(whole), _final_state(killed)
    assert int(a.step) == int(b.step) == STEPS  # exactly the steps asked for: the third epoch cut short
    for part in ("params", "opt_state", "rng"):
        difference = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                  getattr(a, part), getattr(b, part))
        assert max(jax.tree.leaves(difference)) < 1e-6, part
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole, killed)]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == [1, 2, 3]
    for first, second in zip(*rows):
        assert first["test_acc"] == pytest.approx(second["test_acc"]) and first["lr"] == pytest.approx(second["lr"])
    assert rows[0][-1]["test_acc"] > 0.2  # chance is 0.10 (measured: 0.29)

    summary = json.loads((whole / "summary.json").read_text())
    assert summary["config"]["total_steps"] == STEPS and summary["config"]["epochs"] == 3
    assert summary["config"]["resolution"] == 48 and summary["config"]["optimizer"] == "sgd"
    record = json.loads((whole / "run.json").read_text())
    assert record["pretrained"]["format"] == "jax_vit run" and record["eval_split"] == "test"
    assert (whole / "curves.png").stat().st_size > 10_000

    from jax_vit.evaluate import evaluate_run  # scripts/evaluate.py's function, on a fine-tuning workdir

    report = evaluate_run(whole, checkpoint="latest")
    assert report["step"] == STEPS and report["epoch"] == 3
    assert report["test_acc"] == pytest.approx(rows[0][-1]["test_acc"])

    # A --resume with other settings touches nothing and says what changed.
    before = (whole / "metrics.jsonl").read_text()
    code = _script("finetune").main(_argv(pretrained_run, cifar10_sample_dir, whole, "--resume", "--steps", 150))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--resume with different settings (" in error and "total_steps: 200 -> 150" in error
    assert "start a new --workdir" in error and (whole / "metrics.jsonl").read_text() == before


def test_the_starting_point_is_the_checkpoint_with_a_new_zero_head(pretrained_run, cifar10_sample_dir):
    from jax_vit.finetune import finetune_config
    from jax_vit.pretrained import init_params, load_pretrained
    from jax_vit.train import configure_for_dataset

    pretrained = load_pretrained(str(pretrained_run))
    dataset = load_dataset("cifar10", cifar10_sample_dir)
    config = configure_for_dataset(finetune_config(pretrained, dataset), dataset)
    assert (config.width, config.depth, config.patch_size, config.resolution) == (96, 2, 8, 32)
    params = init_params(pretrained, config)
    assert not params["head"]["kernel"].any() and params["head"]["kernel"].shape == (96, 10)
    source = _final_state(pretrained_run).params
    assert np.array_equal(params["blocks"][1]["mlp"]["fc2"]["kernel"], source["blocks"][1]["mlp"]["fc2"]["kernel"])
    assert np.array_equal(params["pos_embed"], source["pos_embed"])  # same 4x4 grid at 32 px: bit-identical
    # One grey channel shared by three: a grey RGB image embeds as the grey image did.
    np.testing.assert_allclose(params["patch_embed"]["kernel"].sum(axis=2), source["patch_embed"]["kernel"][:, :, 0])


# --- the recipe pieces ------------------------------------------------------------------------------------

def test_the_finetuning_presets_keep_to_the_rules_and_are_not_offered_for_training_from_scratch():
    from jax_vit.configs import PRESETS

    for name, preset in FINETUNE_PRESETS.items():
        assert check_config(preset) is preset, name
        assert name not in PRESETS
    sgd = FINETUNE_PRESETS["finetune-sgd"]
    assert (sgd.optimizer, sgd.momentum, sgd.weight_decay, sgd.grad_clip_norm, sgd.batch_size) == ("sgd", 0.9, 0.0,
                                                                                                   1.0, 512)


def test_a_run_in_steps_warms_up_over_its_warmup_steps_and_decays_to_zero_at_its_last():
    from jax_vit.train_step import learning_rate_schedule

    config = get_config("finetune-sgd", {"total_steps": 500, "warmup_steps": 50}, presets=FINETUNE_PRESETS)
    schedule = learning_rate_schedule(config, steps_per_epoch=97)  # the epochs play no part
    assert float(schedule(0)) == 0.0 and float(schedule(25)) == pytest.approx(0.015)
    assert float(schedule(50)) == pytest.approx(0.03) and float(schedule(500)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(275)) == pytest.approx(0.015, rel=1e-5)  # half way through the cosine


def test_sgd_is_momentum_sgd_clipped_at_the_global_norm():
    from jax_vit.train_step import make_optimizer

    config = get_config("finetune-sgd", {"total_steps": 10, "warmup_steps": 0, "learning_rate": 0.1,
                                         "min_learning_rate": 0.1}, presets=FINETUNE_PRESETS)
    tx, _ = make_optimizer(config, 1)
    params = {"w": np.zeros(2, np.float32)}
    state = tx.init(params)
    g1, g2 = {"w": np.array([0.3, 0.4], np.float32)}, {"w": np.array([3.0, 4.0], np.float32)}  # g2 is clipped to 1
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    np.testing.assert_allclose(u1["w"], -0.1 * g1["w"], rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.1 * (g2["w"] / 5.0 + 0.9 * g1["w"]), rtol=1e-6)


def test_layer_decay_scales_each_layers_update_by_its_depth():
    from jax_vit.train_step import make_optimizer, scale_by_layer_decay

    config = get_config("tiny", {"depth": 2, "layer_decay": 0.5})
    tx = scale_by_layer_decay(0.5, depth=2)
    ones = {"patch_embed": {"kernel": np.ones(2)}, "pos_embed": np.ones(2), "cls_token": np.ones(2),
            "blocks": {0: {"w": np.ones(2)}, 1: {"w": np.ones(2)}}, "norm": {"scale": np.ones(2)},
            "head": {"kernel": np.ones(2)}}
    scaled, _ = tx.update(ones, tx.init(ones))
    assert [float(scaled[k][0]) for k in ("pos_embed", "cls_token")] == [0.125, 0.125]
    assert float(scaled["patch_embed"]["kernel"][0]) == 0.125
    assert [float(scaled["blocks"][i]["w"][0]) for i in (0, 1)] == [0.25, 0.5]
    assert float(scaled["head"]["kernel"][0]) == float(scaled["norm"]["scale"][0]) == 1.0
    # Off (1.0) it is not in the chain at all, so the from-scratch optimiser state is what it always was.
    assert len(make_optimizer(config.replace(layer_decay=1.0), 10)[0].init(ones)) == 2
    assert len(make_optimizer(config, 10)[0].init(ones)) == 3


def test_the_step_resizes_the_small_uint8_images_to_the_models_resolution():
    from jax_vit.augment import augment, model_inputs, normalize

    config = get_config("tiny", {"resolution": 64, "input_norm": "inception"})
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    inputs, targets = augment(images, np.arange(4), jax.random.key(0), config)
    assert inputs.shape == (4, 64, 64, 3) and targets.shape == (4, 10)
    resized = model_inputs(images, config)
    assert resized.shape == (4, 64, 64, 3) and float(resized.min()) >= -1.0 and float(resized.max()) <= 1.0
    same = model_inputs(images, config.replace(resolution=0))
    assert np.array_equal(same, normalize(images, config))  # no resolution: no resize
    flat = np.full((1, 32, 32, 3), 200, np.uint8)  # resizing keeps a flat image flat
    np.testing.assert_allclose(model_inputs(flat, config), 200 / 127.5 - 1.0, atol=1e-6)


# --- bad input: one error line, exit status 2 -------------------------------------------------------------

def _refused(argv, capsys) -> str:
    try:
        code = _script("finetune").main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err, captured.err
    errors = [line for line in captured.err.splitlines() if "error: " in line]
    assert len(errors) == 1 and captured.err.strip().splitlines()[-1] == errors[0], captured.err
    return errors[0]


def test_bad_checkpoints_and_options_are_refused_in_one_line_naming_the_fix(
        pretrained_run, cifar10_sample_dir, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    from safetensors.numpy import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((8, 3, 3, 3), np.float32), "fc.weight": np.zeros((10, 8), np.float32)},
              str(other))
    cases = [
        ("/nonexistent/ViT-B_16.npz", [], "checkpoint /nonexistent/ViT-B_16.npz does not exist"),
        ("timm/vit_base_patch16_224.augreg_in21k", [], "is not in the Hugging Face cache"),
        ("timm/vit_base_patch16_224.augreg_in21k", ["--download"], "could not download"),
        (corrupt, [], f"{corrupt} is not a readable safetensors file"),
        (other, [], "is not a ViT state dict"),
        (pretrained_run, ["--resolution", 36], "patch_size 8 does not divide resolution 36: use a multiple of 8 "
                                               "(e.g. --resolution 32 or 40)"),
        (pretrained_run, ["--set", "width=128"], "--set width: the checkpoint fixes it (width=96)"),
        (pretrained_run, ["--config", "tiny"], "invalid choice: 'tiny'"),
        (pretrained_run, ["--val-fraction", "1"], "out of range"),
    ]
    for pretrained, extra, message in cases:
        workdir = tmp_path / "run"
        argv = ["--pretrained", pretrained, "--data-dir", cifar10_sample_dir, "--workdir", workdir, *extra]
        assert message in _refused(argv, capsys), (pretrained, extra)
        assert not workdir.exists()
