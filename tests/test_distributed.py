"""Training on several processes: two real processes on localhost (JAX's CPU collectives over gloo) against one
process with two devices, a killed process, resume, and the launch errors.

Each child process has one CPU device (XLA_FLAGS), so two processes make the same two-device mesh as the
reference run. One two-process run serves every check (CI's time): killed, then resumed, it must still end
exactly where the one-process run does. The children share JAX's compilation cache, which JAX fills from
process 0 only: the resumed process 0 skips compiling.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_vit import checkpoints, distributed
from jax_vit.configs import get_config
from jax_vit.train_step import make_mesh, make_recipe

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
STEPS_PER_EPOCH = 5  # 320 training images, batch 64
# Small enough to compile in seconds; dropout, DropPath, EMA and augmentation on, so every per-device random
# stream and every piece of state must match between one process and two.
SETTINGS = {"depth": 2, "width": 32, "num_heads": 2, "mlp_dim": 64, "dropout": 0.1, "drop_path_rate": 0.1,
            "ema_decay": 0.9, "warmup_epochs": 1}
PEER_TIMEOUT_S = 10
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "ema_test_loss", "ema_test_acc")


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def _argv(data_dir, workdir, *extra):
    argv = ["--config", "tiny", "--data-dir", data_dir, "--workdir", workdir, "--epochs", EPOCHS, "--batch-size", 64,
            "--no-progress", *(a for key, value in SETTINGS.items() for a in ("--set", f"{key}={value}")), *extra]
    return [str(a) for a in argv]


# XLA:CPU's cheaper optimisation: the step compiles in 5 s instead of 13 here. Every run of the comparison is
# compiled alike, so it still compares one process with two, on this machine's CI time budget.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(cache, devices, **variables):
    """A child's environment: CPU only, `devices` host devices, the shared compilation cache, `variables`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return {**inherited, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **variables}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _launch(data_dir, workdir, cache, *extra, name="run"):
    """Two processes of scripts/train.py --distributed on localhost; their logs go to files beside the workdir."""
    port = _free_port()
    processes = []
    for index in range(2):
        log = open(Path(workdir).parent / f"{name}.process{index}.log", "w+")
        env = _env(cache, 1, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(index))
        processes.append((subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "train.py"),
             *_argv(data_dir, workdir, "--distributed", "--peer-timeout", PEER_TIMEOUT_S, *extra)],
            env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return processes


def _wait(processes, timeout=240):
    results = []
    for process, log in processes:
        process.wait(timeout=timeout)
        log.seek(0)
        results.append((process.returncode, log.read()))
        log.close()
    return results


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_train", REPO / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _restore(workdir):
    config = get_config("tiny", SETTINGS)
    manager = checkpoints.make_manager(workdir, read_only=True)
    state = checkpoints.restore(manager, make_recipe(config, STEPS_PER_EPOCH), make_mesh(jax.devices()[:1]))
    manager.close()
    return jax.device_get(state)


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(workdir, reference):
    a, b = _restore(reference), _restore(workdir)
    assert int(a.step) == int(b.step) == EPOCHS * STEPS_PER_EPOCH
    for part in ("params", "ema_params", "opt_state", "rng"):
        difference = max(jax.tree.leaves(jax.tree.map(
            lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), getattr(a, part), getattr(b, part))))
        assert difference < 1e-6, (part, difference)
    expected, got = _rows(reference), _rows(workdir)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected] == list(range(1, EPOCHS + 1))
    for want, have in zip(expected, got):
        for key in COMPARED:
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["epoch"], key)


@pytest.fixture(scope="module")
def reference(small_cifar_dir, compilation_cache, tmp_path_factory):
    """One process, two devices, no --distributed: what two processes of one device each must reproduce."""
    workdir = tmp_path_factory.mktemp("one-process") / "run"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *_argv(small_cifar_dir, workdir)],
                            env=_env(compilation_cache, 2), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def killed_and_resumed(small_cifar_dir, compilation_cache, tmp_path_factory):
    """Two processes of one device each; process 1 is killed (SIGKILL) once the first epoch's checkpoint is
    complete, then both start again with --resume. Returns the workdir and what the survivor did."""
    workdir = tmp_path_factory.mktemp("two-processes") / "run"
    processes = _launch(small_cifar_dir, workdir, compilation_cache)
    (first, _), (second, _) = processes
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / str(STEPS_PER_EPOCH)).is_dir():  # Orbax renames it into place
            assert first.poll() is None and second.poll() is None, "a process ended before its first checkpoint"
            assert time.time() < deadline, "the first epoch never finished"
            time.sleep(0.02)
        second.send_signal(signal.SIGKILL)
        killed_at = time.time()
        first.wait(timeout=PEER_TIMEOUT_S + 30)
        survivor = {"seconds": time.time() - killed_at, "epochs_done": len(_rows(workdir))}
    finally:
        for process, _ in processes:
            process.kill()
    (survivor["code"], survivor["log"]), (killed_code, _) = _wait(processes)
    assert killed_code == -signal.SIGKILL
    resumed = _wait(_launch(small_cifar_dir, workdir, compilation_cache, "--resume", name="resumed"))
    for code, log in resumed:
        assert code == 0, log[-3000:]
    return workdir, survivor, resumed


@pytest.mark.slow  # the two-process runs behind it: about 30 s
def test_a_killed_process_stops_the_other_within_the_peer_timeout(killed_and_resumed):
    _, survivor, _ = killed_and_resumed
    assert survivor["epochs_done"] < EPOCHS, "the run ended before the kill: nothing was tested"
    # Killed during a step, the survivor's collective fails at once (our one-line error); killed while the
    # survivor waits in a checkpoint's barrier, JAX's heartbeat stops it after the peer timeout (JAX's message).
    assert survivor["code"] != 0 and survivor["seconds"] < PEER_TIMEOUT_S + 20, survivor
    log = survivor["log"]
    assert "another process stopped" in log or "another task died" in log, log[-3000:]


@pytest.mark.slow  # the two-process runs behind it: about 30 s
def test_two_processes_killed_and_resumed_end_exactly_as_one_process_with_two_devices(reference, killed_and_resumed):
    workdir, _, ((_, log0), (_, log1)) = killed_and_resumed
    _assert_same_run(workdir, reference)
    # Process 0 alone reports and writes the run's files; the other only announces itself.
    assert "resuming after epoch" in log0 and "best test accuracy" in log0
    reports = ("resuming", "epoch ", "best test")
    assert not any(line.startswith(reports) for line in log1.splitlines()), log1[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["device_count"] == 2
    assert json.loads((workdir / "run.json").read_text())["process_count"] == 2
    assert (workdir / "curves.png").stat().st_size > 10_000


@pytest.mark.slow  # the two-process runs behind it: about 30 s
def test_resume_on_another_process_count_is_refused_with_one_line(killed_and_resumed, small_cifar_dir, capsys):
    workdir, _, _ = killed_and_resumed
    before = (workdir / "metrics.jsonl").read_text()
    assert _script().main(_argv(small_cifar_dir, workdir, "--resume")) == 2  # this pytest process: one process
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "started on 2" in errors[0] and "JAX_NUM_PROCESSES=2" in errors[0], errors
    assert (workdir / "metrics.jsonl").read_text() == before


# --- launch errors: one line naming the fix, before any device is touched ----------------------------------

def _never(*args, **kwargs):  # the real one here would make this pytest process wait for peers, then abort
    raise AssertionError("jax.distributed.initialize reached despite the bad launch")


def _train_main(capsys, monkeypatch, tmp_path, small_cifar_dir, env, *extra, jax_initialize=_never):
    monkeypatch.setattr(jax.distributed, "initialize", jax_initialize)
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.time()
    code = _script().main(_argv(small_cifar_dir, tmp_path / "run", "--distributed", *extra))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    assert not (tmp_path / "run").exists()
    return errors[0], time.time() - started


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not set"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "ids run from 0 to JAX_NUM_PROCESSES - 1"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "must be integers"),
])
def test_an_incomplete_or_wrong_environment_exits_with_one_line(capsys, monkeypatch, tmp_path, small_cifar_dir,
                                                                env, message):
    error, _ = _train_main(capsys, monkeypatch, tmp_path, small_cifar_dir, env)
    assert message in error, error


def test_no_variables_and_no_cluster_found_exits_with_one_line(capsys, monkeypatch, tmp_path, small_cifar_dir):
    # JAX's own answer when its detection finds nothing (faked: a real detection could find this CI machine's
    # Kubernetes or SLURM and make this pytest process wait for peers).
    def nothing_found(*args, **kwargs):
        raise ValueError("coordinator_address should be defined.")

    error, _ = _train_main(capsys, monkeypatch, tmp_path, small_cifar_dir, {}, jax_initialize=nothing_found)
    assert "found no TPU pod slice, SLURM job or MPI launch" in error and "JAX_COORDINATOR_ADDRESS" in error, error


def test_an_unreachable_coordinator_is_reported_after_the_peer_timeout(capsys, monkeypatch, tmp_path,
                                                                       small_cifar_dir):
    env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    error, seconds = _train_main(capsys, monkeypatch, tmp_path, small_cifar_dir, env, "--peer-timeout", "2")
    assert "no coordinator at JAX_COORDINATOR_ADDRESS=localhost:" in error and "after 2 s" in error, error
    assert 2 <= seconds < 10


def test_a_coordinator_port_in_use_is_reported(capsys, monkeypatch, tmp_path, small_cifar_dir):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
        error, _ = _train_main(capsys, monkeypatch, tmp_path, small_cifar_dir, env)
    assert f"port {port} of JAX_COORDINATOR_ADDRESS" in error and "is taken" in error, error


def test_peer_timeout_without_distributed_is_refused(capsys, tmp_path, small_cifar_dir):
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(_argv(small_cifar_dir, tmp_path / "run", "--peer-timeout", "5"))
    assert exit_info.value.code == 2
    assert "--peer-timeout applies only with --distributed" in capsys.readouterr().err
