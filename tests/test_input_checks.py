"""Values that make no sense are refused where they enter: one `error:` line that names the valid range, exit
status 2, nothing written. Nothing here trains, reads a video or builds a model."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from jax_vit.configs import FIELD_RULES, PRESETS, Config, ConfigError, Range, check_config, get_config
from torch_seg.errors import UserError
from torch_seg.prompts import parse_prompt

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"input_checks_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return {name: _script(name) for name in ("train", "ablate", "benchmark", "segment", "track", "bench_track")}


def _refused(main, argv, capsys) -> str:
    """Runs a script's main; asserts exit status 2 and one error line (argparse adds its usage line before
    it), and returns that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own `error:` exit
        code = exit.code
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error: " in line]
    assert len(errors) == 1 and captured.err.strip().splitlines()[-1] == errors[0], captured.err
    return errors[0]


# --- config fields: get_config --------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("dropout", "1.5", "dropout=1.5 is out of range: use a value in [0, 1)"),
    ("attention_dropout", "1", "attention_dropout=1.0 is out of range: use a value in [0, 1)"),
    ("drop_path_rate", "-0.1", "drop_path_rate=-0.1 is out of range: use a value in [0, 1)"),
    ("label_smoothing", "1", "use a value in [0, 1)"),
    ("random_erasing", "1.01", "random_erasing=1.01 is out of range: use a value in [0, 1]"),
    ("mix_prob", "2", "mix_prob=2.0 is out of range: use a value in [0, 1]"),
    ("mix_switch_prob", "-1", "use a value in [0, 1]"),
    ("image_size", "0", "image_size=0 is out of range: use an integer >= 1"),
    ("in_channels", "0", "use an integer >= 1"),
    ("num_classes", "-10", "use an integer >= 1"),
    ("patch_size", "0", "patch_size=0 is out of range: use an integer >= 1"),  # not a ZeroDivisionError
    ("width", "0", "use an integer >= 1"),
    ("depth", "0", "depth=0 is out of range: use an integer >= 1"),
    ("num_heads", "0", "num_heads=0 is out of range"),  # not a ZeroDivisionError
    ("mlp_dim", "-1", "use an integer >= 1"),
    ("epochs", "0", "epochs=0 is out of range: use an integer >= 1"),
    ("batch_size", "-1", "batch_size=-1 is out of range: use an integer >= 1"),
    ("learning_rate", "0", "learning_rate=0.0 is out of range: use a value > 0"),
    ("learning_rate", "nan", "learning_rate=nan is out of range: use a value > 0"),
    ("min_learning_rate", "-1e-5", "use a value in [0, learning_rate] (learning_rate=0.002)"),
    ("min_learning_rate", "0.01", "min_learning_rate=0.01 is out of range: use a value in [0, learning_rate]"),
    ("warmup_epochs", "11", "warmup_epochs=11.0 is out of range: use a value in [0, epochs] (epochs=10)"),
    ("warmup_epochs", "-1", "use a value in [0, epochs]"),
    ("weight_decay", "-0.05", "weight_decay=-0.05 is out of range: use a value >= 0"),
    ("b1", "1", "b1=1.0 is out of range: use a value in [0, 1)"),
    ("b2", "1.5", "b2=1.5 is out of range: use a value in [0, 1)"),
    ("grad_clip_norm", "0", "grad_clip_norm=0.0 is out of range: use a value > 0"),
    ("grad_clip_norm", "inf", "grad_clip_norm=inf is out of range: use a value > 0"),
    ("ema_decay", "1", "ema_decay=1.0 is out of range: use a value in [0, 1)"),
    ("crop_padding", "-1", "crop_padding=-1 is out of range: use an integer in [0, image_size) (image_size=32)"),
    ("crop_padding", "32", "use an integer in [0, image_size) (image_size=32)"),
    ("randaugment_ops", "-1", "randaugment_ops=-1 is out of range: use an integer >= 0"),
    ("randaugment_magnitude", "11", "randaugment_magnitude=11.0 is out of range: use a value in [0, 10]"),
    ("mixup_alpha", "-0.8", "mixup_alpha=-0.8 is out of range: use a value >= 0"),
    ("cutmix_alpha", "-1", "use a value >= 0"),
    ("seed", "-3", "seed=-3 is out of range: use an integer in [0, 4294967296)"),
    ("compute_dtype", "float64", "compute_dtype='float64' is out of range: use one of auto, float32, bfloat16, "
                                 "float16"),
    ("compute_dtype", "int8", "use one of auto, float32, bfloat16, float16"),
    ("micro_batches", "-2", "micro_batches=-2 is out of range: use an integer >= 0"),
    ("attention", "flash", "attention='flash' is out of range: use one of xla, cudnn"),
    ("dataset", "mnist", "dataset='mnist' is out of range: use one of cifar10, fashion_mnist"),
])
def test_a_config_field_out_of_its_range_is_refused_naming_the_range(field, value, message):
    with pytest.raises(ConfigError) as error:
        get_config("tiny", {field: value})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_config_field_has_a_rule_and_every_preset_keeps_to_them():
    assert set(FIELD_RULES) == {f.name for f in dataclasses.fields(Config)}
    for name, preset in PRESETS.items():
        assert check_config(preset) is preset, name


def test_the_edges_of_each_range_are_accepted():
    config = get_config("tiny", {"dropout": "0", "mix_prob": "1", "random_erasing": "1", "warmup_epochs": "10",
                                 "min_learning_rate": "0.002", "crop_padding": "31", "randaugment_magnitude": "10",
                                 "seed": str(2**32 - 1), "ema_decay": "0.9999", "grad_clip_norm": "1e9"})
    assert (config.warmup_epochs, config.min_learning_rate, config.seed) == (10.0, 0.002, 2**32 - 1)


def test_check_config_also_guards_configs_built_with_replace():
    with pytest.raises(ConfigError, match=r"^warmup_epochs=5\.0 is out of range: use a value in \[0, epochs\]"):
        check_config(get_config("tiny").replace(epochs=2, warmup_epochs=5.0))
    with pytest.raises(ConfigError, match="random_flip=1 is out of range: use one of True, False"):
        check_config(get_config("tiny").replace(random_flip=1))
    with pytest.raises(ConfigError, match=r"batch_size=64\.0 is out of range: use an integer >= 1"):
        check_config(get_config("tiny").replace(batch_size=64.0))
    with pytest.raises(ConfigError, match="patch_size 5 does not divide image_size 32"):
        check_config(get_config("tiny").replace(patch_size=5))


def test_the_randaugment_range_is_the_scale_randaugment_takes():
    from jax_vit.randaugment import MAX_MAGNITUDE

    assert FIELD_RULES["randaugment_magnitude"] == Range(0, MAX_MAGNITUDE)


def test_cudnn_attention_is_refused_where_it_cannot_run():
    import jax.numpy as jnp
    from flax import nnx

    from jax_vit.model import VisionTransformer, check_attention

    config = get_config("tiny", {"attention": "cudnn"})
    with pytest.raises(ConfigError, match=r"^attention=cudnn needs an NVIDIA GPU.*\(here: cpu, float32.*=xla$"):
        VisionTransformer(config, rngs=nnx.Rngs(0))  # this CPU
    check_attention(config, jnp.bfloat16, "gpu")  # width 96 / 3 heads: head dim 32
    check_attention(config, jnp.float16, "gpu")  # a T4 or V100 computing in float16
    with pytest.raises(ConfigError, match=r"\(here: gpu, float32"):
        check_attention(config, jnp.float32, "gpu")
    with pytest.raises(ConfigError, match="width/num_heads=20"):
        check_attention(config.replace(width=60), jnp.bfloat16, "gpu")
    check_attention(get_config("tiny"), jnp.float32, "cpu")  # xla runs anywhere


# --- scripts/train.py: its options go through get_config -------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "error: epochs=0 is out of range: use an integer >= 1"),
    (["--batch-size", "-1"], "error: batch_size=-1 is out of range: use an integer >= 1"),
    (["--seed", "-3"], "error: seed=-3 is out of range: use an integer in [0, 4294967296)"),
    (["--set", "dropout=1.5"], "error: dropout=1.5 is out of range: use a value in [0, 1)"),
    (["--config", "best", "--epochs", "2"], "error: warmup_epochs=5.0 is out of range: use a value in [0, epochs]"),
    (["--set", "attention=flash"], "error: attention='flash' is out of range: use one of xla, cudnn"),
])
def test_train_refuses_bad_numbers_before_reading_data(scripts, tmp_path, capsys, args, message):
    workdir = tmp_path / "run"
    error = _refused(scripts["train"].main, ["--workdir", workdir, "--data-dir", tmp_path / "none", *args], capsys)
    assert error.startswith(message), error
    assert not workdir.exists()


def test_train_refuses_an_image_size_the_dataset_does_not_have(scripts, tmp_path, capsys, cifar10_sample_dir):
    workdir = tmp_path / "run"
    error = _refused(scripts["train"].main, ["--workdir", workdir, "--data-dir", cifar10_sample_dir,
                                             "--set", "image_size=64"], capsys)
    assert error == ("error: image_size=64 does not match the cifar10 images (32x32): drop --set image_size "
                     "or set it to 32")
    assert not workdir.exists()


# --- scripts/ablate.py ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "argument --epochs: 0 is out of range: use an integer >= 1"),
    (["--epochs", "two"], "argument --epochs: 'two' is not an integer: use an integer >= 1"),
    (["--budget-minutes", "0"], "argument --budget-minutes: 0 is out of range: use a value > 0"),
    (["--budget-minutes", "inf"], "argument --budget-minutes: inf is out of range: use a value > 0"),
    (["--epochs", "1", "--val-fraction", "1"], "argument --val-fraction: 1 is out of range: use a value in (0, 1)"),
    (["--epochs", "1", "--val-fraction", "0"], "use a value in (0, 1)"),
    (["--epochs", "1", "--seeds", "0,-1"], "error: --seeds '0,-1': seed -1 is out of range: use an integer in [0, "),
    (["--epochs", "1", "--seeds", ","], "error: --seeds ',': expected comma-separated integers"),
    (["--epochs", "1", "--set", "mix_prob=2"], "error: mix_prob=2.0 is out of range: use a value in [0, 1]"),
])
def test_ablate_refuses_bad_numbers_before_reading_data(scripts, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    error = _refused(scripts["ablate"].main, ["--grid", "patch", "--data-dir", tmp_path / "none", "--out", out, *args],
                     capsys)
    assert message in error, error
    assert not out.exists()


# --- scripts/benchmark.py -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--batch-size", "-1"], "argument --batch-size: -1 is out of range: use an integer >= 1"),
    (["--steps", "0"], "argument --steps: 0 is out of range: use an integer >= 1"),
    (["--repeats", "0"], "argument --repeats: 0 is out of range: use an integer >= 1"),
    (["--warmup-steps", "-1"], "argument --warmup-steps: -1 is out of range: use an integer >= 0"),
    (["--epoch-repeats", "0"], "argument --epoch-repeats: 0 is out of range: use an integer >= 1"),
    (["--loader-workers", "-1"], "argument --loader-workers: -1 is out of range: use an integer >= 0"),
    (["--set", "width=0"], "error: width=0 is out of range: use an integer >= 1"),
])
def test_benchmark_refuses_bad_numbers(scripts, tmp_path, capsys, args, message):
    out = tmp_path / "bench.json"
    error = _refused(scripts["benchmark"].main, ["--out", out, "--no-progress", *args], capsys)
    assert message in error, error
    assert not out.exists()


# --- scripts/segment.py, track.py, bench_track.py ---------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--max-detections", "0"], "error: --max-detections must be at least 1, got 0"),
    (["--box-threshold", "1.5"], "error: --box-threshold 1.5 is outside [0, 1]"),
    (["--text-threshold", "-0.1"], "error: --text-threshold -0.1 is outside [0, 1]"),
    (["--box-threshold", "nan"], "error: --box-threshold nan is outside [0, 1]"),
    (["--prompt", "truck. ... ; !!"], "error: the prompt phrase '!!' has no letter or digit"),
])
def test_segment_refuses_bad_numbers_and_prompts_before_looking_at_images(scripts, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["--image", tmp_path / "missing.jpg", "--prompt", "truck", "--out", out, *args]
    error = _refused(scripts["segment"].main, argv, capsys)
    assert error.startswith(message), error
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--max-frames", "0"], "error: --max-frames must be at least 1, got 0"),
    (["--prompt-frame", "-1"], "error: --prompt-frame must be 0 or more, got -1"),
    (["--redetect-every", "0"], "error: --redetect-every must be at least 1, got 0"),
    (["--max-objects", "0"], "error: --max-objects must be at least 1, got 0"),
    (["--match-iou", "2"], "error: --match-iou 2.0 must be in (0, 1]"),
    (["--match-iou", "0"], "error: --match-iou 0.0 must be in (0, 1]"),
    (["--box-threshold", "1.5"], "error: --box-threshold 1.5 is outside [0, 1]"),
    (["--prompt", "!!. ??"], "error: the prompt phrase '!!' has no letter or digit"),
])
def test_track_refuses_bad_numbers_before_opening_the_video(scripts, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["--video", tmp_path / "missing.mp4", "--prompt", "child", "--out", out, "--device", "cpu", *args]
    error = _refused(scripts["track"].main, argv, capsys)
    assert error.startswith(message), error  # not "video not found": the numbers come first
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--num-frames", "1"], "need at least 2 frames"),
    (["--objects", "0"], "1 object"),
    (["--warmup-passes", "-1"], "0 warm-up passes"),
])
def test_bench_track_refuses_bad_numbers_before_opening_the_video(scripts, tmp_path, capsys, args, message):
    out = tmp_path / "bench.json"
    argv = ["--video", tmp_path / "missing.mp4", "--device", "cpu", "--out", out, *args]
    error = _refused(scripts["bench_track"].main, argv, capsys)
    assert error.startswith("error: --num-frames") and message in error, error
    assert not out.exists()


# --- prompts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, bad", [("truck. ... ; !!", "'!!'"), ("!!. ??", "'!!'"), ("car; -", "'-'"),
                                         ("🚗", "'🚗'")])
def test_a_phrase_without_a_letter_or_digit_is_refused_by_name(prompt, bad):
    with pytest.raises(UserError) as error:
        parse_prompt(prompt)
    assert str(error.value).startswith(f"the prompt phrase {bad} has no letter or digit: a phrase names an object")


def test_empty_fragments_between_separators_still_vanish_and_words_in_any_script_count():
    assert parse_prompt("truck. . wheel") == ["truck", "wheel"]
    assert parse_prompt("salt & pepper. 猫. 4x4") == ["salt & pepper", "猫", "4x4"]
