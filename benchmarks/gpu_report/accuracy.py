"""The `accuracy` part, one dataset per process: `best` against the first write-up's recipe at full size.

    python -m benchmarks.gpu_report.accuracy --dataset cifar10 --data-dir DIR --out accuracy/cifar10 \
        --json accuracy/cifar10.json --budget-s 120 [--smoke]

The runs are the ablation runner's (`jax_vit.ablation.runner.run_grid`, grid `best`): the same validation split
(10% of each class of the training images) for choosing, the test split scored once at the end for the
report, the recipes at the base's model size (seed-384x8: width 384, depth 8, 4x4 patches), every run the same
epochs and seeds. CIFAR-10 compares `best` with the first write-up's recipe; Fashion-MNIST trains `best`.

The epochs come from the budget: one epoch of `best` is timed first (`seconds_per_epoch`: compile, warm-up,
timed steps), then the most seeds (up to 3) that fit at the target epochs (200), else one seed at as many
epochs as fit. `--smoke` trains the tiny preset for one epoch on the first few hundred images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SETTINGS = {  # the `best` grid's settings each dataset trains
    "cifar10": ("write-up 1 recipe (seed-384x8)", "best"),
    "fashion_mnist": ("best",),
}
TARGET_EPOCHS = 200
MAX_SEEDS = 3
# A run's epochs also hold the per-epoch validation scoring and checkpoint writes the probe does not time.
EPOCH_SAFETY = 1.25
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 512, 256
PROBE_STEPS = 1 + 3 + 8  # seconds_per_epoch: the compiling step, 3 untimed, 8 timed


def plan_runs(budget_s: float, per_epoch_s: float, overhead_s: float, settings: int,
              target_epochs: int = TARGET_EPOCHS, max_seeds: int = MAX_SEEDS) -> tuple[int, int]:
    """(epochs, seeds) that fit in `budget_s`: the most seeds at `target_epochs`, else one seed at the epochs
    that fit (0 when not even one does). `overhead_s` is each run's fixed cost (compiles, scoring)."""
    epoch_s = per_epoch_s * EPOCH_SAFETY
    for seeds in range(max_seeds, 0, -1):
        if settings * seeds * (overhead_s + target_epochs * epoch_s) <= budget_s:
            return target_epochs, seeds
    return max(0, int((budget_s / settings - overhead_s) // epoch_s)), 1


def _subset(dataset, train: int, test: int):
    import dataclasses

    return dataclasses.replace(dataset, train_images=dataset.train_images[:train],
                               train_labels=dataset.train_labels[:train], test_images=dataset.test_images[:test],
                               test_labels=dataset.test_labels[:test], source=f"{dataset.source} (first {train} "
                                                                              f"train, {test} test images)")


def _run_figures(run: dict) -> dict:
    epochs = [e["train_seconds"] for e in run["history"]]
    seconds = [b - a for a, b in zip([0.0] + epochs[:-1], epochs)]
    steady = sorted(seconds[1:])[len(seconds[1:]) // 2] if len(seconds) > 1 else None
    return {
        "setting": run["setting"], "seed": run["seed"], "epochs": run["epochs"], "params": run["params"],
        "train_seconds": run["train_seconds"], "val_accuracy": run["val_accuracy"],
        "val_accuracy_ema": run["val_accuracy_ema"], "test_accuracy": run["test_accuracy"],
        "test_accuracy_ema": run["test_accuracy_ema"],
        # Epoch 1 holds the step's compilation; the median of the others is the steady epoch.
        "first_epoch_s": seconds[0] if seconds else None, "steady_epoch_s": steady,
        "val_curve": [e["val_accuracy"] for e in run["history"]],
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def measure(dataset_name: str, data_dir: Path, out_dir: Path, budget_s: float, smoke: bool,
            json_path: Path | None = None) -> dict:
    """The step's record; written once with status "running" before the runs, so a kill leaves the plan."""
    started = time.perf_counter()
    import jax

    from jax_vit import reporting
    from jax_vit.ablation.grids import Setting, setting_config
    from jax_vit.ablation.runner import run_grid, validation_split
    from jax_vit.ablation.train_run import seconds_per_epoch
    from jax_vit.configs import get_config
    from jax_vit.data import load_dataset
    from jax_vit.reporting import write_json
    from jax_vit.train import configure_for_dataset

    dataset = load_dataset(dataset_name, data_dir)
    if smoke:
        dataset = _subset(dataset, SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES)
    preset = "tiny" if smoke else "seed-384x8"
    base = configure_for_dataset(get_config(preset), dataset)
    settings = SETTINGS[dataset_name]
    target = 1 if smoke else TARGET_EPOCHS
    train_idx, _ = validation_split(dataset.train_labels, 0.1)  # the runner's split, for the probe
    # The probe trains `best` as its first seed will at the target epochs (the schedule is compiled in), so when
    # the plan keeps them that run reuses the probe's compiled step.
    probe_config = setting_config(base, Setting("best", recipe_preset="best"), target, 0)
    probe_started = time.perf_counter()
    per_epoch_s = seconds_per_epoch(probe_config, (dataset.train_images[train_idx], dataset.train_labels[train_idx]))
    probe_s = time.perf_counter() - probe_started
    step_s = per_epoch_s / max(len(train_idx) // probe_config.batch_size, 1)
    compile_s = max(probe_s - PROBE_STEPS * step_s, 0.0)
    # Each run compiles its step and its evaluation, writes checkpoints and scores the test split at the end.
    overhead_s = 1.5 * compile_s + 2.0
    left_s = budget_s - (time.perf_counter() - started)
    epochs, seeds = plan_runs(left_s, per_epoch_s, overhead_s, len(settings), target, 1 if smoke else MAX_SEEDS)
    plan = {"budget_s": budget_s, "left_after_probe_s": left_s, "per_epoch_s": per_epoch_s, "probe_s": probe_s,
            "probe_compile_s": compile_s, "overhead_per_run_s": overhead_s, "target_epochs": target,
            "planned_epochs": epochs, "epochs": epochs, "seeds": seeds, "settings": list(settings), "base": preset}
    if smoke and epochs < 1:  # the smoke checks the code path: it trains its one epoch whatever the clock says
        epochs = plan["epochs"] = 1
    record = {"dataset": dataset_name, "source": dataset.source, "train_images": len(dataset.train_images),
              "test_images": len(dataset.test_images), "smoke": smoke, "plan": plan,
              "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
              "versions": reporting.versions()}
    if epochs < 1:
        one = len(settings) * (overhead_s + per_epoch_s * EPOCH_SAFETY)
        return {**record, "status": "skipped",
                "reason": f"{left_s:.0f} s left after timing an epoch ({per_epoch_s:.1f} s) fits no epoch of "
                          f"{len(settings)} run(s): one epoch each needs about {one:.0f} s"}
    header = (f"GPU report, accuracy part: {dataset_name} ({dataset.source}), {preset} size, {epochs} epochs, "
              f"{seeds} seed(s), on {record['device']}, jax {jax.__version__}.")
    if json_path is not None:
        write_json(json_path, {**record, "status": "running"})
    runs = run_grid("best", base, dataset, out_dir, epochs=epochs, seeds=list(range(seeds)), settings=list(settings),
                    header=header)
    figures = [_run_figures(run) for run in runs]
    by_setting = {}
    for name in settings:
        mine = [f for f in figures if f["setting"] == name]
        by_setting[name] = {key: _mean([f[key] for f in mine]) for key in (
            "val_accuracy", "val_accuracy_ema", "test_accuracy", "test_accuracy_ema", "steady_epoch_s",
            "first_epoch_s", "train_seconds")}
        by_setting[name]["seeds"] = len(mine)
    stats = jax.devices()[0].memory_stats() or {}
    record.update(status="ok", runs=figures, settings=by_setting, val_images=runs[0]["val_images"],
                  peak_memory_bytes=stats.get("peak_bytes_in_use"),
                  files={"curves": "accuracy.png", "table": "results.md", "runs": "runs.jsonl"})
    if "best" in by_setting and settings[0] != "best":
        record["best_minus_writeup_test"] = by_setting["best"]["test_accuracy"] - by_setting[settings[0]]["test_accuracy"]
    return record


def main(argv: list[str] | None = None) -> int:
    from jax_vit.reporting import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=tuple(SETTINGS), required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the ablation runner's folder")
    parser.add_argument("--json", type=Path, required=True, help="this step's record")
    parser.add_argument("--budget-s", type=float, required=True, help="seconds the runs may take, probe included")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    record = measure(args.dataset, args.data_dir, args.out, args.budget_s, args.smoke, args.json)
    write_json(args.json, record)
    print(f"{args.dataset}: {record['status']} {record.get('reason', '')}".rstrip())
    return 0


if __name__ == "__main__":
    from jax_vit.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc()  # as scripts/train.py: XLA:CPU's per-step buffers
    sys.exit(main())
