"""The compute dtype per device generation (JAX trainer and PyTorch baseline), the platform messages, and the
loss guard's view of a skipped float16 step. All pure functions or fake devices: no GPU needed."""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks.torch_train import autocast_dtype, torch_precision
from jax_vit.configs import get_config
from jax_vit.model import compute_dtype
from jax_vit.platforms import PlatformError, check_requested_platform, cpu_fallback_note, platform_error_message
from jax_vit.precision import (GROWTH_INTERVAL, MIN_LOSS_SCALE, DynamicLossScale, device_precision,
                               select_precision)
from jax_vit.train import _first_divergence

# (device, platform, compute capability as jax.Device reports it, expected dtype)
GENERATIONS = [
    ("Tesla P100-PCIE-16GB", "gpu", "6.0", "float16"),
    ("Tesla P40", "gpu", "6.1", "float32"),  # Pascal's consumer chip: float16 at a fraction of float32's rate
    ("Tesla V100-SXM2-16GB", "gpu", "7.0", "float16"),
    ("Tesla T4", "gpu", "7.5", "float16"),
    ("NVIDIA A100-SXM4-40GB", "gpu", "8.0", "bfloat16"),
    ("NVIDIA L4", "gpu", "8.9", "bfloat16"),
    ("NVIDIA H100 80GB HBM3", "gpu", "9.0", "bfloat16"),
    ("AMD Instinct MI250X", "gpu", "gfx90a", "bfloat16"),  # ROCm: no CUDA capability, the documented default
    ("TPU v2", "tpu", None, "bfloat16"),
    ("TPU v5 lite", "tpu", None, "bfloat16"),
    ("cpu", "cpu", None, "float32"),
]


@pytest.mark.parametrize("kind, platform, capability, expected", GENERATIONS)
def test_auto_picks_the_dtype_of_each_device_generation_and_says_why(kind, platform, capability, expected):
    fake = SimpleNamespace(platform=platform, device_kind=kind, compute_capability=capability)
    precision = device_precision("auto", fake)
    assert precision.dtype == expected
    assert precision.loss_scaling == (expected == "float16")
    assert kind in precision.reason or platform == "cpu"
    if platform == "gpu" and capability[0].isdigit():
        assert f"sm_{capability.replace('.', '')}" in precision.reason
    # The model and the PyTorch baseline follow the same rule.
    config = get_config("tiny")
    assert compute_dtype(config, platform, capability) == jnp.dtype(expected)


def test_an_explicit_compute_dtype_wins_everywhere():
    for requested in ("float32", "bfloat16", "float16"):
        for platform, capability in (("cpu", None), ("gpu", "7.5"), ("gpu", "9.0"), ("tpu", None)):
            precision = select_precision(requested, platform, capability)
            assert precision.dtype == requested and precision.reason == f"compute_dtype={requested} was set"
    assert "float16 with dynamic loss scaling" in select_precision("float16", "cpu").describe()
    with pytest.raises(ValueError, match="float64"):
        select_precision("float64", "cpu")


def test_the_dtype_on_this_cpu_is_float32():
    assert device_precision("auto").dtype == "float32"
    assert compute_dtype(get_config("tiny")) == jnp.float32


def test_the_pytorch_baseline_follows_the_jax_rule(monkeypatch):
    cuda = torch.device("cuda")
    for capability, expected in (((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16),
                                 ((9, 0), torch.bfloat16), ((6, 1), None)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a fake GPU")
        assert autocast_dtype(cuda) == expected, capability
        assert "a fake GPU" in torch_precision(cuda).reason
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cpu"), "float16") == torch.float16


# --- dynamic loss scaling, the pure part -----------------------------------------------------------------

def test_the_loss_scale_halves_on_an_overflow_and_doubles_after_a_run_of_finite_steps():
    scale = DynamicLossScale.create(1024.0)
    assert float(scale.adjust(jnp.asarray(False)).scale) == 512.0
    assert int(scale.adjust(jnp.asarray(False)).good_steps) == 0
    step = jax.jit(lambda s: s.adjust(jnp.asarray(True)))
    for _ in range(GROWTH_INTERVAL - 1):
        scale = step(scale)
    assert float(scale.scale) == 1024.0 and int(scale.good_steps) == GROWTH_INTERVAL - 1
    scale = step(scale)
    assert float(scale.scale) == 2048.0 and int(scale.good_steps) == 0
    floor = DynamicLossScale.create(MIN_LOSS_SCALE).adjust(jnp.asarray(False))
    assert float(floor.scale) == MIN_LOSS_SCALE
    grads = {"w": jnp.asarray([2048.0, -1024.0], jnp.float16)}
    np.testing.assert_array_equal(DynamicLossScale.create(1024.0).unscale(grads)["w"], [2.0, -1.0])


def test_the_loss_guard_lets_a_skipped_float16_step_pass_but_not_a_real_divergence():
    fine = {"loss": 2.3, "grad_norm": 1.0}
    skipped = {"loss": 2.3, "grad_norm": float("nan"), "skipped": 1.0, "loss_scale": 32768.0}
    assert _first_divergence([fine, skipped, dict(skipped, grad_norm=float("inf")), fine]) is None
    assert _first_divergence([fine, skipped, dict(fine, loss=float("nan"))]) == (2, "loss became NaN/inf")
    assert _first_divergence([fine, dict(fine, grad_norm=float("inf"))]) == (1, "loss became NaN/inf")
    at_floor = dict(skipped, loss_scale=MIN_LOSS_SCALE)
    index, what = _first_divergence([fine, at_floor])
    assert index == 1 and "float16 gradients overflowed with the loss scale at 1" in what


# --- which backend JAX runs on ---------------------------------------------------------------------------

def test_jax_platforms_naming_a_missing_tpu_is_one_line_naming_the_install(monkeypatch):
    # What jax 0.10 raises for JAX_PLATFORMS=tpu without libtpu (tests/test_jax_vit_train.py runs the real one).
    error = RuntimeError("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot "
                         "open shared object file: No such file or directory (set JAX_PLATFORMS='' to "
                         "automatically choose an available backend)")
    message = platform_error_message(["tpu"], error)
    assert message.startswith("JAX_PLATFORMS=tpu asks for a TPU, but JAX could not start it (")
    assert 'pip install "jax[tpu]"' in message and "\n" not in message and "JAX_PLATFORMS=''" not in message
    cuda = platform_error_message(["cuda"], AssertionError())
    assert "NVIDIA GPU" in cuda and 'pip install "jax[cuda12]"' in cuda and "(no such device here)" in cuda
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    monkeypatch.setattr(jax, "devices", lambda *a: (_ for _ in ()).throw(error))
    with pytest.raises(PlatformError, match=r'jax\[tpu\]'):
        check_requested_platform()
    monkeypatch.delenv("JAX_PLATFORMS")
    with pytest.raises(RuntimeError, match="libtpu"):  # not asked for: jax's own error, unchanged
        check_requested_platform()


def test_jax_on_an_apple_silicon_cpu_says_so_once():
    note = cpu_fallback_note("cpu", system="darwin", machine="arm64")
    assert "no Metal backend" in note and "CPU" in note and "--device mps" in note
    assert cpu_fallback_note("cpu", system="linux", machine="x86_64") is None
    assert cpu_fallback_note("cpu", system="darwin", machine="x86_64") is None  # an Intel Mac: no MPS story
    assert cpu_fallback_note("gpu", system="darwin", machine="arm64") is None
