"""RandAugment / TrivialAugment: per-image random ops in jnp that keep images valid and are reproducible."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vit import randaugment as ra

MAGNITUDE_FREE = {"autocontrast", "equalize"}


@pytest.fixture(scope="module")
def images():
    # Smooth gradients plus noise: every op (autocontrast, equalize, sharpness...) has something to change.
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, 32)[None, :, None] + np.linspace(0, 30, 32)[:, None, None]
    batch = ramp[None] + rng.normal(0, 12, (6, 32, 32, 3))
    return jnp.asarray(np.clip(batch, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(set(ra.OPS) - MAGNITUDE_FREE))
def test_every_op_is_the_identity_at_magnitude_zero(images, name):
    np.testing.assert_array_equal(ra.apply_op(images, name, 0.0), images)


@pytest.mark.parametrize("name", sorted(set(ra.OPS) - {"identity"}))
@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_ops_at_full_magnitude_change_images_and_keep_shape_dtype_and_range(images, name, dtype):
    x = images if dtype == jnp.uint8 else images.astype(jnp.float32) / 255.0
    top = 255 if dtype == jnp.uint8 else 1.0
    for magnitude in (10.0, -10.0):
        y = ra.apply_op(x, name, magnitude)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0 and float(y.max()) <= top
        assert not np.array_equal(np.asarray(y), np.asarray(x)), f"{name} at {magnitude} changed nothing"


def test_solarize_at_full_magnitude_inverts_every_pixel(images):
    np.testing.assert_array_equal(ra.apply_op(images, "solarize", 10.0), 255 - images)


def test_posterize_at_full_magnitude_keeps_four_bits(images):
    y = np.asarray(ra.apply_op(images, "posterize", 10.0))
    np.testing.assert_array_equal(y % 16, 0)
    np.testing.assert_array_equal(y, np.asarray(images) & 0xF0)


def test_translate_moves_pixels_by_whole_pixels_and_fills_with_grey(images):
    shift = round(ra.MAX_TRANSLATE_FRACTION * 32)  # 10 px at full magnitude
    y = np.asarray(ra.apply_op(images, "translate_x", 10.0))
    np.testing.assert_array_equal(y[:, :, shift:], np.asarray(images)[:, :, :-shift])
    np.testing.assert_array_equal(y[:, :, :shift], ra.FILL)


def test_autocontrast_stretches_each_channel_to_full_range(images):
    y = np.asarray(ra.apply_op(images, "autocontrast", 0.0))
    assert (y.min(axis=(1, 2)) == 0).all() and (y.max(axis=(1, 2)) == 255).all()


def test_equalize_spreads_a_low_contrast_image_over_the_full_range(images):
    dull = images // 4 + 100  # values squeezed into [100, 164)
    y = np.asarray(ra.apply_op(dull, "equalize", 0.0))
    # An equalised histogram is roughly flat: its quartiles sit near 64 / 128 / 192.
    np.testing.assert_allclose(np.percentile(y, [25, 50, 75]), [64, 128, 192], atol=20)


def test_rand_augment_is_reproducible_per_key_and_random_per_image(images):
    augment = jax.jit(lambda x, k: ra.rand_augment(x, k, num_ops=2, magnitude=9.0))
    same = jnp.broadcast_to(images[:1], (16, 32, 32, 3))
    a = augment(same, jax.random.key(0))
    np.testing.assert_array_equal(a, augment(same, jax.random.key(0)))
    assert not np.array_equal(np.asarray(a), np.asarray(augment(same, jax.random.key(1))))
    distinct = {np.asarray(img).tobytes() for img in a}
    assert len(distinct) >= 12, "identical inputs should get different ops per image"
    assert a.dtype == jnp.uint8 and a.shape == same.shape


def test_rand_augment_off_or_identity_only_returns_the_images(images):
    key = jax.random.key(0)
    np.testing.assert_array_equal(ra.rand_augment(images, key, num_ops=0), images)
    np.testing.assert_array_equal(ra.rand_augment(images, key, num_ops=3, ops=("identity",)), images)


def test_trivial_augment_on_float_images_stays_in_unit_range(images):
    x = images.astype(jnp.float32) / 255.0
    y = jax.jit(ra.trivial_augment)(x, jax.random.key(3))
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    np.testing.assert_array_equal(y, jax.jit(ra.trivial_augment)(x, jax.random.key(3)))


def test_grayscale_images_work(images):
    gray = images[..., :1]
    y = ra.rand_augment(gray, jax.random.key(0), num_ops=2, magnitude=9.0)
    assert y.shape == gray.shape and y.dtype == jnp.uint8


def test_bad_options_are_rejected_with_the_choices(images):
    with pytest.raises(ValueError, match="choose from"):
        ra.rand_augment(images, jax.random.key(0), ops=("blur",))
    with pytest.raises(ValueError, match="outside"):
        ra.rand_augment(images, jax.random.key(0), magnitude=12.0)
