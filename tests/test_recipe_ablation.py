"""Ablation runner: fair budgets, a validation split from training images only, resumable result files."""
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from jax_vit.ablation import grids, report, runner
from jax_vit.configs import PRESETS, get_config
from jax_vit.data import Dataset
from jax_vit.model import VisionTransformer, count_params

ROOT = Path(__file__).resolve().parents[1]


def _dataset(n_train=200, n_test=50):
    rng = np.random.default_rng(0)
    return Dataset(
        name="cifar10",
        train_images=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        train_labels=(np.arange(n_train) % 10).astype(np.int32),
        test_images=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=(np.arange(n_test) % 10).astype(np.int32),
        class_names=tuple(str(i) for i in range(10)), source="synthetic",
    )


class FakeTrainer:
    """Records what each run was given; accuracy is a made-up function of the config."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, train, val, test, workdir):
        self.calls.append((config, train, val, test))
        acc = 0.5 + 0.01 * config.patch_size + 0.001 * config.seed
        history = [{"epoch": e, "train_seconds": float(e), "val_accuracy": acc * e / config.epochs,
                    "val_accuracy_ema": None} for e in range(1, config.epochs + 1)]
        return {"params": 1000, "train_seconds": float(config.epochs), "history": history, "val_accuracy": acc,
                "val_accuracy_ema": None, "test_accuracy": acc - 0.05, "test_accuracy_ema": None}


def test_validation_split_is_stratified_disjoint_and_fixed():
    labels = np.repeat(np.arange(10), 50)
    train, val = runner.validation_split(labels, 0.1)
    assert np.intersect1d(train, val).size == 0 and train.size + val.size == labels.size
    assert (np.bincount(labels[val], minlength=10) == 5).all()
    np.testing.assert_array_equal(val, runner.validation_split(labels, 0.1)[1])
    with pytest.raises(grids.AblationError, match="between 0 and 1"):
        runner.validation_split(labels, 1.5)


def test_shape_grid_holds_the_parameter_count_roughly_equal():
    base = get_config("tiny")
    counts = []
    for setting in grids.GRIDS["shape"](base):
        config = base.replace(**setting.changes)
        model = nnx.eval_shape(lambda: VisionTransformer(config, rngs=nnx.Rngs(0)))
        counts.append(count_params(nnx.split(model)[1]))
    assert len({s.changes["depth"] for s in grids.GRIDS["shape"](base)}) >= 3
    assert max(counts) / min(counts) < 1.2, counts


def test_optimise_grid_varies_batch_size_and_learning_rate_around_the_base():
    base = get_config("tiny", {"batch_size": 128, "learning_rate": 2e-3})
    settings = grids.GRIDS["optimise"](base)
    batches = [s.changes["batch_size"] for s in settings if "batch_size" in s.changes]
    rates = [s.changes["learning_rate"] for s in settings if "learning_rate" in s.changes]
    assert batches == [64, 128, 256] and rates == pytest.approx([1e-3, 4e-3])
    assert all(len(s.changes) == 1 for s in settings), "each setting changes one thing"
    assert [s.name for s in settings][-2:] == ["lr 0.001", "lr 0.004"]


def test_recipe_presets_run_at_the_base_model_size_with_the_shared_budget():
    base = get_config("tiny")
    setting = grids.Setting("write-up", recipe_preset="seed-384x8")
    config = grids.setting_config(base, setting, epochs=3, seed=7)
    assert (config.width, config.depth, config.patch_size) == (base.width, base.depth, base.patch_size)
    assert config.drop_path_rate == PRESETS["seed-384x8"].drop_path_rate
    assert (config.epochs, config.seed) == (3, 7)
    assert config.warmup_epochs == pytest.approx(0.6), "5 warm-up epochs must not eat a 3-epoch budget"


def test_the_best_grid_trains_every_recipe_on_real_fashion_mnist(fashion_mnist_dir, tmp_path, capsys):
    """The recipe presets name CIFAR-10; on a grey dataset they must keep the base's data and channels."""
    from jax_vit.data import load_dataset

    full = load_dataset("fashion_mnist", fashion_mnist_dir)
    small = dataclasses.replace(full, train_images=full.train_images[:640], train_labels=full.train_labels[:640],
                                test_images=full.test_images[:128], test_labels=full.test_labels[:128])
    base = get_config("tiny", {"depth": 1, "batch_size": 64}).replace(dataset="fashion_mnist", in_channels=1)
    for setting in grids.GRIDS["best"](base):
        config = grids.setting_config(base, setting, epochs=1, seed=0)
        assert (config.dataset, config.in_channels) == ("fashion_mnist", 1), setting.name
    runs = runner.run_grid("best", base, small, tmp_path, epochs=1, seeds=[0])
    assert len(runs) == 4
    assert all(0.0 <= run["test_accuracy"] <= 1.0 and run["params"] > 0 for run in runs)
    # Every epoch is scored on validation images, and the log must not call them test images.
    log = capsys.readouterr()
    log = log.out + log.err
    assert log.count("| val loss") == 4 and "test loss" not in log, log


def test_augment_grid_settings_mean_what_they_say_on_any_base():
    for base in (get_config("tiny"), get_config("best"), get_config("heavy-aug")):
        configs = {s.name: grids.setting_config(base, s, epochs=1, seed=0) for s in grids.GRIDS["augment"](base)}
        on = lambda c: (c.randaugment_ops > 0, c.mixup_alpha > 0 or c.cutmix_alpha > 0, c.random_erasing > 0)
        assert on(configs["crop+flip"]) == (False, False, False)
        assert on(configs["+RandAugment"]) == (True, False, False)
        assert on(configs["+Mixup/CutMix"]) == (False, True, False)
        assert on(configs["+RandAugment +Mixup/CutMix"]) == (True, True, False)
    # On the tiny base (every recorded augment grid) the configs are what they were: nothing is retrained.
    tiny = get_config("tiny")
    assert grids.setting_config(tiny, grids.Setting("crop+flip", dict(grids.NO_RECIPE_AUGMENTATION)), 1, 0) \
        == grids.setting_config(tiny, grids.Setting("old crop+flip"), 1, 0)


def test_run_grid_gives_every_setting_the_same_budget_seeds_and_splits(tmp_path):
    data, trainer = _dataset(), FakeTrainer()
    runs = runner.run_grid("patch", get_config("tiny"), data, tmp_path, epochs=2, seeds=[0, 1], train_fn=trainer)
    assert len(runs) == 6 and len(trainer.calls) == 6
    assert {c.epochs for c, *_ in trainer.calls} == {2}
    assert sorted(c.seed for c, *_ in trainer.calls) == [0, 0, 0, 1, 1, 1]
    _, train, val, test = trainer.calls[0]
    assert len(train[0]) + len(val[0]) == 200 and len(val[0]) == 20
    np.testing.assert_array_equal(test[0], data.test_images)
    # The validation images are training images, never test images.
    train_rows = {img.tobytes() for img in data.train_images}
    assert all(img.tobytes() in train_rows for img in val[0])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["setting"] for r in rows] == ["patch 2", "patch 2", "patch 4", "patch 4", "patch 8", "patch 8"]
    table = (tmp_path / "results.md").read_text()
    assert "**patch 8**" in table, "the best setting on validation is marked"
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_run_grid_resumes_and_trains_an_identical_config_only_once(tmp_path):
    data, trainer = _dataset(), FakeTrainer()
    base = get_config("tiny").replace(patch_size=4)
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer)
    assert len(trainer.calls) == 3
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer)
    assert len(trainer.calls) == 3, "finished runs are not trained again"
    # "DropPath 0" on tiny is exactly "patch 4": reused, not retrained.
    runner.run_grid("regularise", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer)
    assert len(trainer.calls) == 6
    runs = report.load_runs(tmp_path)
    reused = next(r for r in runs if r["setting"] == "DropPath 0")
    assert reused["val_accuracy"] == next(r for r in runs if r["setting"] == "patch 4")["val_accuracy"]


def test_settings_keeps_only_the_named_settings_and_rejects_unknown_names(tmp_path):
    data, trainer = _dataset(), FakeTrainer()
    runs = runner.run_grid("best", get_config("tiny"), data, tmp_path, epochs=1, seeds=[0, 1],
                             settings=["best", "write-up 1 recipe (seed-384x8)"], train_fn=trainer)
    assert [(r["setting"], r["seed"]) for r in runs] == [
        ("write-up 1 recipe (seed-384x8)", 0), ("write-up 1 recipe (seed-384x8)", 1), ("best", 0), ("best", 1)]
    assert {c.mixup_alpha for c, *_ in trainer.calls} == {0.0, 0.8}, "write-up 1 and best, nothing else"
    with pytest.raises(grids.AblationError, match="'heavy-aug'"):
        runner.run_grid("best", get_config("tiny"), data, tmp_path, epochs=1, seeds=[0], settings=["heavy"],
                          train_fn=trainer)
    assert len(trainer.calls) == 4, "an unknown name trains nothing"


def test_seeds_added_later_with_another_epoch_count_are_reported_not_a_crash(tmp_path):
    # A time budget measured again for new seeds can give them other epochs than the first seeds got.
    data, base = _dataset(), get_config("tiny")
    runner.run_grid("patch", base, data, tmp_path, budget_minutes=1.0, seeds=[0], settings=["patch 8"],
                      train_fn=FakeTrainer(), epoch_seconds_fn=lambda config, train: 5.0)
    runner.run_grid("patch", base, data, tmp_path, budget_minutes=1.0, seeds=[0, 1], settings=["patch 8"],
                      train_fn=FakeTrainer(), epoch_seconds_fn=lambda config, train: 6.0)
    assert [r["epochs"] for r in report.load_runs(tmp_path)] == [12, 10]
    assert "| **patch 8** | 2 | 12 / 10 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_results_md_names_every_command_that_filled_the_folder(tmp_path):
    data, trainer, base = _dataset(), FakeTrainer(), get_config("tiny")
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer, header="Command: A.")
    assert (tmp_path / "results.md").read_text().startswith("Command: A.\n")
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0, 1], train_fn=trainer, header="Command: B.")
    text = (tmp_path / "results.md").read_text()
    assert "Filled by 2 commands, in order:\n\n1. Command: A.\n2. Command: B.\n" in text
    # A resume that trains nothing adds no command; runs recorded without one are flagged, not misattributed.
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0, 1], train_fn=trainer, header="Command: C.")
    assert "Command: C." not in (tmp_path / "results.md").read_text()
    old = [{k: v for k, v in run.items() if k != "header"} for run in report.load_runs(tmp_path)[:3]]
    assert report.command_headers(old + report.load_runs(tmp_path)[3:]) == [
        report.UNRECORDED_HEADER, "Command: B."]


def test_a_reused_run_keeps_the_command_that_trained_it(tmp_path):
    data, trainer, base = _dataset(), FakeTrainer(), get_config("tiny")
    runner.run_grid("patch", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer, header="Command: A.")
    runner.run_grid("regularise", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer, header="Command: B.")
    runs = {r["setting"]: r for r in report.load_runs(tmp_path)}
    # "DropPath 0" is the base config, which the patch grid trained as "patch <base's patch size>".
    trained_as = f"patch {base.patch_size}"
    assert runs["DropPath 0"]["reused_from"] == f"[patch] {trained_as}"
    assert runs["DropPath 0"]["header"] == runs[trained_as]["header"] == "Command: A."
    assert runs["DropPath 0.1"]["header"] == "Command: B." and "reused_from" not in runs["DropPath 0.1"]
    # A command that only reuses runs trained nothing and is not named.
    runner.run_grid("augment", base, data, tmp_path, epochs=1, seeds=[0], train_fn=trainer, header="Command: C.",
                      settings=["crop+flip"])
    assert "Command: C." not in (tmp_path / "results.md").read_text()
    crop_flip = next(r for r in report.load_runs(tmp_path) if r["setting"] == "crop+flip")
    assert crop_flip["reused_from"] == f"[patch] {trained_as}" and crop_flip["header"] == "Command: A."


def test_time_budget_gives_slower_settings_fewer_epochs(tmp_path):
    trainer = FakeTrainer()
    speed = lambda config, train: {2: 60.0, 4: 15.0, 8: 5.0}[config.patch_size]  # seconds per epoch
    runner.run_grid("patch", get_config("tiny"), _dataset(), tmp_path, budget_minutes=1.0, seeds=[0],
                      train_fn=trainer, epoch_seconds_fn=speed)
    assert {c.patch_size: c.epochs for c, *_ in trainer.calls} == {2: 1, 4: 4, 8: 12}


class Crash(Exception):
    pass


class CrashingTrainer(FakeTrainer):
    """Starts its run the way the real trainer does (run.json with the config and the sizes of the data it
    trains and is scored on, in the run's folder), then dies."""

    def __call__(self, config, train, val, test, workdir):
        workdir.mkdir(parents=True)
        record = {"config": config.to_dict(), "train_size": len(train[1]), "test_size": len(val[1])}
        (workdir / "run.json").write_text(json.dumps(record))
        raise Crash


def test_an_interrupted_time_budget_run_keeps_its_epochs_and_its_folder_goes_once_recorded(tmp_path):
    data, base = _dataset(), get_config("tiny")
    with pytest.raises(Crash):
        runner.run_grid("patch", base, data, tmp_path, budget_minutes=1.0, seeds=[0], settings=["patch 8"],
                          train_fn=CrashingTrainer(), epoch_seconds_fn=lambda config, train: 5.0)
    workdir = runner.in_progress_dir(tmp_path, "patch", "patch 8", 0)
    assert runner.interrupted_config(workdir)["epochs"] == 12 and report.load_runs(tmp_path) == []
    # Measured again the speed would give 6 epochs; the interrupted run must finish the 12 it started with.
    trainer = FakeTrainer()
    runner.run_grid("patch", base, data, tmp_path, budget_minutes=1.0, seeds=[0], settings=["patch 8"],
                      train_fn=trainer, epoch_seconds_fn=lambda config, train: 10.0)
    assert [c.epochs for c, *_ in trainer.calls] == [12]
    assert [r["epochs"] for r in report.load_runs(tmp_path)] == [12]
    assert not (tmp_path / runner.IN_PROGRESS).exists()


def test_an_interrupted_run_with_other_settings_is_refused_not_overwritten(tmp_path):
    data, base = _dataset(), get_config("tiny")
    with pytest.raises(Crash):
        runner.run_grid("patch", base, data, tmp_path, epochs=2, seeds=[0], train_fn=CrashingTrainer())
    workdir = runner.in_progress_dir(tmp_path, "patch", "patch 2", 0)
    with pytest.raises(grids.AblationError, match=r"holds an interrupted run of \[patch\] patch 2 seed 0 .*"
                                                     r"learning_rate: 0.002 -> 0.001.*delete that folder"):
        runner.run_grid("patch", base.replace(learning_rate=1e-3), data, tmp_path, epochs=2, seeds=[0],
                          train_fn=FakeTrainer())
    assert runner.interrupted_config(workdir)["learning_rate"] == 0.002
    # Another validation split changes the data under the same config: also refused.
    with pytest.raises(grids.AblationError, match=r"patch 2 seed 0 .*train_size: \d+ -> \d+.*delete that folder"):
        runner.run_grid("patch", base, data, tmp_path, epochs=2, seeds=[0], val_fraction=0.2,
                          train_fn=FakeTrainer())


def test_an_interrupted_grid_resumes_its_run_to_the_uninterrupted_result(cifar10_sample_dir, tmp_path, monkeypatch,
                                                                        capsys):
    """Real training on real images: a run killed after epoch 2 of 3 continues from its checkpoint."""
    from jax_vit.ablation import train_run
    from jax_vit.data import load_dataset

    full = load_dataset("cifar10", cifar10_sample_dir)
    data = dataclasses.replace(full, train_images=full.train_images[:400], train_labels=full.train_labels[:400],
                               test_images=full.test_images[:100], test_labels=full.test_labels[:100])
    # DropPath, EMA and augmentation on, so resuming must restore every random stream and the EMA.
    base = get_config("tiny", {"depth": 1, "batch_size": 64, "drop_path_rate": 0.1, "ema_decay": 0.9})
    grid = dict(epochs=3, seeds=[0], settings=["patch 8"])
    whole = runner.run_grid("patch", base, data, tmp_path / "whole", **grid)

    train_and_evaluate = train_run.train_and_evaluate

    def killed_after_epoch_2(*args, **kwargs):
        def crash(epoch, row):
            if epoch == 2:
                raise Crash
        return train_and_evaluate(*args, **kwargs, on_epoch_end=crash)

    monkeypatch.setattr(train_run, "train_and_evaluate", killed_after_epoch_2)
    with pytest.raises(Crash):
        runner.run_grid("patch", base, data, tmp_path / "split", **grid)
    monkeypatch.setattr(train_run, "train_and_evaluate", train_and_evaluate)
    capsys.readouterr()
    split = runner.run_grid("patch", base, data, tmp_path / "split", **grid)
    log = capsys.readouterr()
    log = log.out + log.err
    assert "resuming after epoch 2 of 3" in log and "epoch 1/3" not in log and "epoch 3/3" in log, log
    [a], [b] = whole, split
    assert [e["epoch"] for e in b["history"]] == [1, 2, 3]
    for key in ("val_accuracy", "val_accuracy_ema", "train_loss"):
        assert [e[key] for e in a["history"]] == pytest.approx([e[key] for e in b["history"]], abs=1e-6), key
    for key in ("val_accuracy", "val_accuracy_ema", "test_accuracy", "test_accuracy_ema"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert not (tmp_path / "split" / runner.IN_PROGRESS).exists()


def test_a_diverged_run_names_the_ablation_fix_and_keeps_its_last_good_checkpoint(cifar10_sample_dir, tmp_path):
    from jax_vit.data import load_dataset

    full = load_dataset("cifar10", cifar10_sample_dir)
    data = dataclasses.replace(full, train_images=full.train_images[:400], train_labels=full.train_labels[:400],
                               test_images=full.test_images[:100], test_labels=full.test_labels[:100])
    # A learning-rate "floor" of 1e30 blows the cosine phase up for real after the 1-epoch warm-up (get_config
    # refuses a floor above the peak; replace() checks nothing, which lets this test make a run diverge).
    base = get_config("tiny", {"depth": 1, "batch_size": 64}).replace(min_learning_rate=1e30)
    with pytest.raises(grids.AblationError) as error:
        runner.run_grid("patch", base, data, tmp_path, epochs=5, seeds=[0], settings=["patch 8"])
    message = str(error.value)
    assert message.startswith("loss became NaN/inf at step") and "(epoch 2)" in message, message
    assert message.endswith("kept (step 5); lower the base learning rate (--set learning_rate=...) and give a new --out")
    assert "--resume" not in message, "ablate.py has no --resume"
    workdir = runner.in_progress_dir(tmp_path, "patch", "patch 8", 0)
    assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["5"], "the last good checkpoint is kept"


def test_epoch_time_for_a_time_budget_leaves_the_slow_first_steps_untimed(monkeypatch):
    """The compile and the first steps after it are slow; only the steps after them are timed."""
    from jax_vit.ablation import train_run

    clock, calls = [0.0], []

    def fake_step(state, images, labels):
        calls.append(len(calls))
        clock[0] += 5.0 if len(calls) <= 4 else 0.1  # compile + 3 slow steps, then 0.1 s a step
        return state, np.zeros(())

    monkeypatch.setattr(train_run, "make_train_step", lambda recipe, mesh: fake_step)
    monkeypatch.setattr(train_run.time, "perf_counter", lambda: clock[0])
    data = _dataset()
    config = get_config("tiny", {"depth": 1, "batch_size": 16})
    seconds = train_run.seconds_per_epoch(config, (data.train_images, data.train_labels))
    assert len(calls) == 1 + 3 + 8
    assert seconds == pytest.approx(0.1 * (len(data.train_images) // 16))


def test_bad_grid_and_budget_are_rejected(tmp_path):
    with pytest.raises(grids.AblationError, match="choose one of"):
        runner.run_grid("colour", get_config("tiny"), _dataset(), tmp_path, epochs=1, seeds=[0])
    with pytest.raises(grids.AblationError, match="exactly one budget"):
        runner.run_grid("patch", get_config("tiny"), _dataset(), tmp_path, seeds=[0])


def test_cli_reports_user_errors_in_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--grid", "colour", "--data-dir", str(tmp_path),
           "--epochs", "1", "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown grid") and "Traceback" not in result.stderr
    cmd[cmd.index("colour")] = "patch,best"
    result = subprocess.run(cmd + ["--settings", "best"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --settings names the settings of one grid: give a single --grid")
    cmd[cmd.index("patch,best")] = "patch"
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_names_how_to_continue_an_interrupted_grid(cifar10_sample_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_ablate", ROOT / "scripts" / "ablate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "run_grid", interrupted)
    out = tmp_path / "out"
    code = script.main(["--grid", "patch", "--data-dir", str(cifar10_sample_dir), "--epochs", "1", "--out", str(out)])
    assert code == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted; the same command continues: finished runs are kept in {out}/runs.jsonl and the "
        f"interrupted one resumes from its last epoch")


def test_cli_says_which_set_fields_the_best_grid_does_not_take(cifar10_sample_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_ablate", ROOT / "scripts" / "ablate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trained = []
    monkeypatch.setattr(script, "run_grid", lambda grid, base, *args, **kwargs: trained.append((grid, base)))
    argv = ["--data-dir", str(cifar10_sample_dir), "--epochs", "1", "--out", str(tmp_path / "out"),
            "--set", "patch_size=8", "--set", "batch_size=128", "--set", "ema_decay=0.999"]
    assert script.main(["--grid", "patch,best", *argv]) == 0
    note = capsys.readouterr().err.strip()
    assert note.startswith("note: --set batch_size, ema_decay does not apply to the best grid")
    # ... and it is true: the recipes keep their own batch and EMA, and take the patch size.
    best_base = trained[1][1]
    for setting in grids.GRIDS["best"](best_base):
        config = grids.setting_config(best_base, setting, epochs=1, seed=0)
        recipe = PRESETS[setting.recipe_preset]
        assert (config.batch_size, config.ema_decay, config.patch_size) == (recipe.batch_size, recipe.ema_decay, 8)
    assert script.main(["--grid", "patch", *argv]) == 0 and "note" not in capsys.readouterr().err
