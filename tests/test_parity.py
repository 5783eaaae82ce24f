"""The PyTorch baseline is the same model as the Flax ViT: same weights and inputs give the same logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.torch_vit import VisionTransformer as TorchViT
from benchmarks.weight_transfer import (
    flax_params_to_numpy,
    load_flax_weights,
    torch_params_to_flax_numpy,
)
from jax_vit.configs import PRESETS, get_config
from jax_vit.model import VisionTransformer


def flax_model_with_random_head(config, seed=0):
    """The head is zero-initialised, which would make every logit 0: give it weights so logits differ."""
    model = VisionTransformer(config, rngs=nnx.Rngs(seed), dtype=jnp.float32)
    head = model.head.kernel
    head.set_value(jax.random.normal(jax.random.key(seed + 1), head.get_value().shape) * 0.1)
    return model


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_float32_logits_match_for_every_preset(preset):
    config = get_config(preset)
    flax_model = flax_model_with_random_head(config)
    torch_model = load_flax_weights(TorchViT(config), flax_model).eval()
    images = np.random.default_rng(0).standard_normal((2, config.image_size, config.image_size, 3), np.float32)

    jax_logits = np.asarray(flax_model(jnp.asarray(images), train=False))
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()

    assert np.abs(jax_logits).max() > 0.1  # the comparison is between real, non-trivial logits
    np.testing.assert_allclose(torch_logits, jax_logits, atol=1e-4, rtol=0)


def test_weight_transfer_covers_every_parameter_both_ways():
    config = get_config("tiny")
    flax_model = flax_model_with_random_head(config)
    flax_params = flax_params_to_numpy(flax_model)
    torch_model = load_flax_weights(TorchViT(config), flax_model)

    back = torch_params_to_flax_numpy(torch_model)
    assert back.keys() == flax_params.keys()
    for name, value in flax_params.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_weight_transfer_rejects_a_model_of_another_shape():
    flax_model = flax_model_with_random_head(get_config("tiny"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_flax_weights(TorchViT(get_config("tiny").replace(width=48, num_heads=3, mlp_dim=96)), flax_model)


def test_torch_model_initialises_like_the_flax_model():
    """Same initialisers, so both frameworks start training from statistically identical models."""
    config = get_config("seed-256x6")
    torch.manual_seed(0)
    torch_model = TorchViT(config)
    flax_params = flax_params_to_numpy(VisionTransformer(config, rngs=nnx.Rngs(0)))
    torch_params = torch_params_to_flax_numpy(torch_model)
    for name, value in flax_params.items():
        assert torch_params[name].shape == value.shape, name
        assert torch_params[name].std() == pytest.approx(value.std(), rel=0.1, abs=1e-6), name
