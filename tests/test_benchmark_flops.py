"""Model FLOPs counted from the architecture agree with XLA's own count, and MFU uses the right peak."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks.flops import forward_flops_per_image, mfu, peak_flops, train_flops_per_image
from jax_vit.configs import get_config
from jax_vit.model import VisionTransformer


@pytest.mark.parametrize("preset", ["seed-256x6", "seed-384x8"])
def test_forward_flops_match_xla_cost_analysis(preset):
    config = get_config(preset)
    graph, state = nnx.split(VisionTransformer(config, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda state, x: nnx.merge(graph, state)(x))
    cost = forward.lower(state, jnp.zeros((4, 32, 32, 3))).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_per_image = cost["flops"] / 4
    # XLA also counts LayerNorm, softmax and GELU, which the model-FLOPs convention leaves out.
    assert 0.9 * xla_per_image <= forward_flops_per_image(config) <= xla_per_image


def test_seed_384x8_costs_about_1_9_gflops_forward_per_image():
    config = get_config("seed-384x8")
    assert forward_flops_per_image(config) == pytest.approx(1.8945e9, rel=1e-3)
    assert train_flops_per_image(config) == 3 * forward_flops_per_image(config)


def test_mfu_uses_the_named_gpu_peak_and_is_unknown_on_cpu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None
    config = get_config("seed-384x8")
    images_per_s = 0.5 * 989.4e12 / train_flops_per_image(config)
    assert mfu(config, images_per_s, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert mfu(config, images_per_s, "AMD EPYC") is None
