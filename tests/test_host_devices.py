"""One XLA:CPU device per core (jax_vit/host_devices.py) and the devices a CPU run splits its batch over."""
import os
import subprocess
import sys

import jax
import pytest

from jax_vit.host_devices import (FLAG, MAX_DEFAULT_DEVICES, HostDevicesError, device_count,
                                  use_cores_as_devices)
from jax_vit.train_step import data_parallel_devices


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (3, 3), (64, MAX_DEFAULT_DEVICES)])
def test_one_device_per_core_up_to_the_default_cap(cores, expected):
    assert device_count({}, cores) == expected


def test_the_environment_sets_the_count_and_a_bad_one_names_the_fix():
    assert device_count({"VIT_CPU_DEVICES": "1"}, cores=8) == 1
    assert device_count({"VIT_CPU_DEVICES": " 6 "}, cores=2) == 6
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(HostDevicesError, match="VIT_CPU_DEVICES=.*whole number"):
            device_count({"VIT_CPU_DEVICES": bad}, cores=2)


def test_the_flag_joins_the_users_xla_flags_and_an_existing_count_is_kept():
    environ = {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}
    assert use_cores_as_devices(environ, cores=2) == 2
    assert environ["XLA_FLAGS"] == f"--xla_cpu_use_onednn=true {FLAG}=2"
    assert use_cores_as_devices(environ, cores=3) is None  # already there: not added twice, not changed
    assert environ["XLA_FLAGS"].count(FLAG) == 1
    environ = {}
    assert use_cores_as_devices(environ, cores=1) == 1 and "XLA_FLAGS" not in environ  # XLA's default already


def test_cpu_devices_are_cut_to_a_count_that_divides_the_batch():
    devices = jax.devices()  # two CPU devices (tests/conftest.py)
    assert len(devices) == 2 and devices[0].platform == "cpu"
    assert data_parallel_devices(128, devices) == devices
    assert data_parallel_devices(7, devices) == devices[:1]
    assert data_parallel_devices(6) == devices


PROBE = ("from jax_vit.host_devices import use_cores_as_devices_or_exit\n"
         "use_cores_as_devices_or_exit()\n"
         "import jax\n"
         "print(jax.device_count(), jax.devices()[0].platform)\n")


def _probe(tmp_path, **env):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VIT_CPU_DEVICES")}
    environ.update(JAX_PLATFORMS="cpu", **env)
    return subprocess.run([sys.executable, str(script)], env=environ, capture_output=True, text=True, timeout=120)


def test_a_real_process_gets_one_cpu_device_per_core(tmp_path):
    result = _probe(tmp_path)
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))
    assert result.stdout.split() == [str(min(cores, MAX_DEFAULT_DEVICES)), "cpu"]
    assert _probe(tmp_path, VIT_CPU_DEVICES="3").stdout.split() == ["3", "cpu"]


def test_a_bad_count_stops_the_process_with_one_line(tmp_path):
    result = _probe(tmp_path, VIT_CPU_DEVICES="many")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: VIT_CPU_DEVICES='many': give a whole number of CPU devices, 1 or more (1 keeps XLA's single CPU device)"]
