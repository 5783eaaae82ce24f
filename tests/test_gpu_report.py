"""scripts/gpu_report.py: one command, one budget, one report. `--smoke` runs every part's real code on the CPU
(tiny sizes, random weights); the bad inputs are refused, or recorded, in one line that names the fix."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_report import report as gpu_report
from benchmarks.gpu_report.accuracy import plan_runs
from benchmarks.gpu_report.markdown import SMOKE_BANNER
from benchmarks.gpu_report.parts import PARTS, Part, Step, attention_verdict

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_report.py"
STATUSES = {"ok", "skipped"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cifar10_sample_dir, seg_dir):
    """One real --smoke run of all five parts, shared by the tests below. The budget leaves room for a CPU
    shared with other work; the default --smoke budget is 3 minutes."""
    out = tmp_path_factory.mktemp("gpu_report") / "smoke"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--data-dir", str(seg_dir.parent),
                           "--smoke", "--budget-minutes", "8"], capture_output=True, text=True, timeout=900)
    print(f"smoke run: {time.monotonic() - started:.0f} s")
    return out, done, json.loads((out / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.once
def test_smoke_runs_every_part_and_exits_zero_with_each_ok_or_skipped_with_its_reason(smoke):
    out, done, report = smoke
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert report["smoke"] is True and report["finished"] is True and report["schema"] == gpu_report.SCHEMA
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] in STATUSES, (name, part.get("reason"))
        if part["status"] == "skipped":
            assert part["reason"], name
        for step in part["steps"]:
            assert step["status"] in STATUSES and (step["status"] == "ok" or step["reason"]), (name, step)
    # The parts whose inputs are in ../shared/data and the venv all ran.
    assert [n for n, p in report["parts"].items() if p["status"] == "ok"] == list(PARTS)
    assert report["machine"]["jax"]["versions"]["jax"] and report["machine"]["torch"]["versions"]["torch"]


@pytest.mark.slow
@pytest.mark.once
def test_each_part_writes_its_own_json_with_figures_and_the_files_it_names(smoke):
    out, _, report = smoke
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in PARTS}
    assert {p["part"] for p in parts.values()} == set(PARTS)
    machine = parts["machine"]["figures"]
    assert machine["jax"]["measured_peak_flops"] > 0 and machine["torch"]["measured_peak_flops"] > 0
    speed = parts["speed"]["figures"]
    run = speed["runs"]["tiny batch 32"]
    assert set(run["results"]) == {"jax", "torch", "torch-compile"}
    assert all(r["compile_s"] > 0 and r["images_per_s"] > 0 for r in run["results"].values())
    assert "jax/torch" in run["ratios"] and "jax-cudnn" in speed["not_run"]  # cuDNN needs a GPU: said so
    accuracy = parts["accuracy"]["figures"]
    assert set(accuracy["cifar10"]["settings"]) == {"write-up 1 recipe (seed-384x8)", "best"}
    for record in accuracy.values():
        assert record["status"] == "ok" and record["plan"]["epochs"] == 1
        assert all(0 <= r["test_accuracy"] <= 1 and r["val_curve"] for r in record["runs"])
    assert (out / "accuracy" / "cifar10" / "accuracy.png").stat().st_size > 0  # the curves
    segment = parts["segment"]["figures"]
    assert segment["random_weights"] is True and segment["load_s"] > 0 and segment["first_image_s"] > 0
    assert set(segment["chain_ms_mean_over_images"]) == {"detect", "sam_encode", "sam_decode", "total"}
    track = parts["track"]["figures"]["runs"]["tiny"]
    assert track["frames_per_s"] > 0 and track["authors_a100_fps"] == 91.2
    for part in report["parts"].values():
        for step in part["steps"]:
            if step["status"] == "ok":
                assert (out / step["output"]).is_file() and (out / step["log"]).is_file()


@pytest.mark.slow
@pytest.mark.once
def test_report_md_carries_the_smoke_banner_and_a_row_per_figure_naming_machine_and_versions(smoke):
    out, _, report = smoke
    text = (out / "report.md").read_text()
    assert SMOKE_BANNER in text and "| figure | value | machine | results file |" in text
    rows = report["rows"]
    assert {row["part"] for row in rows} == set(PARTS)
    for row in rows:
        assert f"| {row['figure']} |" in text
        assert row["machine"].startswith("CPU:") and row["versions"]["jax"] and row["versions"]["torch"]
    assert any("random weights" in row["figure"] for row in rows if row["part"] == "segment")
    speed_rows = [row for row in rows if row["part"] == "speed" and row["compile_s"] is not None]
    assert speed_rows and all("compile" in row["value"] for row in speed_rows)
    for name in PARTS:
        assert f"## {name}: ok" in text


def test_no_gpu_without_smoke_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_report, "gpu_inventory", lambda: [])
    assert gpu_report.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no GPU found" in err and "--smoke" in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_part_is_refused_with_the_part_names(tmp_path, capsys):
    assert gpu_report.main(["--out", str(tmp_path), "--smoke", "--parts", "speed,benchmark"]) == 2
    err = capsys.readouterr().err
    assert "unknown part 'benchmark'" in err and "machine, speed, accuracy, segment, track" in err


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def fake_parts(monkeypatch):
    """Replace the five parts by injected ones: the orchestration is under test, not the measurements."""
    def install(*parts: Part):
        monkeypatch.setattr(gpu_report, "PARTS", {part.name: part for part in parts})
    return install


def _writes(path_expr: str) -> str:
    return f"import json, sys; open({path_expr!r}, 'w').write(json.dumps({{'value': 1}}))"


def test_a_crashing_part_is_recorded_with_its_error_the_next_part_still_runs_and_the_exit_is_nonzero(
        tmp_path, fake_parts, capsys):
    out = tmp_path / "out"
    crash = Part("crash", 0.5, lambda ctx, s: [Step("boom", lambda left: _python(
        "import sys; print('loading'); sys.exit('boom: injected failure')"), ctx.out / "x", min_s=0)],
        lambda ctx, steps: {}, lambda ctx, figures: [])
    fine = Part("fine", 0.5, lambda ctx, s: [Step("writes", lambda left: _python(_writes(str(ctx.out / "fine.out.json"))),
                                                  ctx.out / "fine.out.json", min_s=0)],
                lambda ctx, steps: {"records": [s["record"] for s in steps]}, lambda ctx, figures: [])
    fake_parts(crash, fine)
    assert gpu_report.main(["--out", str(out), "--smoke", "--budget-minutes", "1"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["parts"]["crash"]["status"] == "failed"
    assert "exit status 1" in report["parts"]["crash"]["reason"] and "boom: injected failure" in report["parts"]["crash"]["reason"]
    assert report["parts"]["fine"]["status"] == "ok" and report["parts"]["fine"]["figures"] == {"records": [{"value": 1}]}
    assert json.loads((out / "crash.json").read_text())["status"] == "failed"
    assert "## crash: failed" in (out / "report.md").read_text()


def test_a_step_that_runs_past_its_share_is_killed_and_recorded_as_timed_out(tmp_path, fake_parts):
    out = tmp_path / "out"
    hang = Part("hang", 1.0, lambda ctx, s: [Step("sleeps", lambda left: _python(
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "time.sleep(60)"), ctx.out / "x", min_s=0)], lambda ctx, steps: {}, lambda ctx, figures: [])
    fake_parts(hang)
    started = time.monotonic()
    assert gpu_report.main(["--out", str(out), "--smoke", "--budget-minutes", "0.05"]) == 1  # 3 s
    assert time.monotonic() - started < 20
    step = json.loads((out / "report.json").read_text())["parts"]["hang"]["steps"][0]
    assert step["status"] == "failed" and step["reason"].startswith("timed out")


def test_an_out_folder_holding_a_report_is_refused_unless_overwrite(tmp_path, fake_parts, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    fine = Part("fine", 1.0, lambda ctx, s: [Step("writes", lambda left: _python(_writes(str(ctx.out / "fine.out.json"))),
                                                  ctx.out / "fine.out.json", min_s=0)],
                lambda ctx, steps: {}, lambda ctx, figures: [])
    fake_parts(fine)
    assert gpu_report.main(["--out", str(out), "--smoke"]) == 2
    assert "holds another report" in capsys.readouterr().err and (out / "report.json").read_text() == "{}"
    assert gpu_report.main(["--out", str(out), "--smoke", "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["parts"]["fine"]["status"] == "ok"
    assert (out / "notes.txt").read_text() == "mine"  # only what a report writes is replaced


def test_a_budget_below_what_a_part_needs_skips_it_with_the_reason(tmp_path):
    out = tmp_path / "out"
    # 1.2 s for the machine part, whose steps each need 3 s: nothing starts.
    assert gpu_report.main(["--out", str(out), "--smoke", "--parts", "machine", "--budget-minutes", "0.02"]) == 0
    part = json.loads((out / "report.json").read_text())["parts"]["machine"]
    assert part["status"] == "skipped" and "needs at least 3 s" in part["reason"]
    assert "--budget-minutes" in part["reason"] and not (out / "logs").exists()


def test_missing_inputs_skip_a_part_with_the_reason(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "data"
    empty.mkdir()
    assert gpu_report.main(["--out", str(out), "--smoke", "--parts", "segment", "track", "--data-dir", str(empty)]) == 0
    parts = json.loads((out / "report.json").read_text())["parts"]
    assert parts["segment"]["status"] == "skipped" and "no photos" in parts["segment"]["reason"]
    assert parts["track"]["status"] == "skipped" and "no frames" in parts["track"]["reason"]


def test_the_budget_plan_takes_the_most_seeds_at_the_target_epochs_else_the_epochs_that_fit():
    # 2 settings, 1 s/epoch (1.25 with the margin), 10 s fixed per run: 3 seeds at 200 need 6 * 260 s.
    assert plan_runs(1600, 1.0, 10, 2) == (200, 3)
    assert plan_runs(1100, 1.0, 10, 2) == (200, 2)
    assert plan_runs(300, 1.0, 10, 2) == (112, 1)  # (300 / 2 - 10) / 1.25
    assert plan_runs(15, 1.0, 10, 2) == (0, 1)  # not one epoch: the caller skips with the reason


def _run(xla_ips, cudnn_ips, xla_loss, cudnn_loss, same=True):
    return {"results": {"jax": {"images_per_s": xla_ips, "final_loss": xla_loss},
                        "jax-cudnn": {"images_per_s": cudnn_ips, "final_loss": cudnn_loss}},
            "attention_check": {"same": same, "max_abs_error_vs_float32": {"xla": 4e-3, "cudnn": 5e-3}}}


def test_cudnn_attention_is_recommended_as_the_gpu_default_only_when_faster_and_the_same():
    assert attention_verdict(_run(100, 130, 1.500, 1.502)).endswith("make attention='cudnn' the GPU default")
    assert "keep attention='xla' (not faster)" in attention_verdict(_run(100, 99, 1.5, 1.5))
    assert "numbers differ" in attention_verdict(_run(100, 130, 1.5, 1.9))
    assert "numbers differ" in attention_verdict(_run(100, 130, 1.5, 1.5, same=False))


def test_the_speed_benchmark_refuses_jax_cudnn_where_jax_has_no_gpu():
    import jax

    from benchmarks.speed import BenchmarkError, _ratios, check_comparable, parse_frameworks
    from jax_vit.configs import get_config

    assert parse_frameworks("jax,jax-cudnn,torch") == ["jax", "jax-cudnn", "torch"]
    if jax.default_backend() != "gpu":
        with pytest.raises(BenchmarkError, match="jax-cudnn .* needs an NVIDIA GPU"):
            check_comparable(get_config("tiny"), ["jax", "jax-cudnn"])
    ratios = _ratios({"jax": {"images_per_s": 300.0}, "jax-cudnn": {"images_per_s": 450.0},
                      "torch": {"images_per_s": 150.0}})
    assert ratios == {"jax/torch": 2.0, "jax-cudnn/torch": 3.0, "jax-cudnn/jax": 1.5}


def test_the_segment_benchmark_falls_back_to_random_weights_where_a_checkpoint_is_missing_and_says_which(
        tmp_path, monkeypatch):
    import torch_seg.checkpoints as checkpoints
    from torch_seg.bench import choose_weights
    from torch_seg.errors import UserError

    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(checkpoints, "DEFAULT_TEXT_ENCODER_DIR", tmp_path / "bert-base-uncased")
    random_weights, note = choose_weights("auto", "tiny", "swin_t")
    assert random_weights is True and note.startswith("random weights:") and "sam2.1_hiera_tiny.pt" in note
    with pytest.raises(UserError, match="sam2.1_hiera_tiny.pt"):
        choose_weights("checkpoints", "tiny", "swin_t")
