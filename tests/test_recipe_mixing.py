"""Mixup / CutMix / random erasing: targets follow the pixels, stay distributions, and off means off."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_vit import mixing
from jax_vit.augment import smooth_targets

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def batch():
    # Image i is the constant i, so every output pixel says which source image it came from.
    images = jnp.broadcast_to(jnp.arange(8, dtype=jnp.float32)[:, None, None, None], (8, 32, 32, 3))
    labels = jnp.arange(8) % NUM_CLASSES
    return images, labels


def test_smoothed_targets_sum_to_one_with_the_right_peak():
    t = smooth_targets(jnp.array([0, 3, 9]), NUM_CLASSES, 0.1)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t.max(-1), 0.9 + 0.01, rtol=1e-6)
    np.testing.assert_allclose(t.min(-1), 0.01, rtol=1e-6)


def test_mixup_weights_targets_exactly_as_the_pixels(batch):
    images, labels = batch
    targets = smooth_targets(labels, NUM_CLASSES, 0.1)
    for seed in range(5):
        x, t = mixing.mixup(images, targets, jax.random.key(seed), alpha=0.8)
        # Pixel of image 0 = lam * 0 + (1 - lam) * 7, so lam = 1 - x / 7.
        lam = 1.0 - float(x[0, 0, 0, 0]) / 7.0
        np.testing.assert_allclose(t, lam * targets + (1 - lam) * targets[::-1], atol=1e-5)
        np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_target_weight_equals_the_pasted_area(batch, seed):
    images, labels = batch
    targets = jax.nn.one_hot(labels, NUM_CLASSES)
    x, t = mixing.cutmix(images, targets, jax.random.key(seed), alpha=1.0)
    pasted = float((x[0, :, :, 0] == 7.0).mean())  # image 0 receives pixels of image 7
    assert float(t[0, labels[0]]) == pytest.approx(1.0 - pasted, abs=1e-6)
    assert float(t[0, labels[7]]) == pytest.approx(pasted, abs=1e-6)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_box_clipped_at_the_border_reports_the_clipped_area():
    # Over many draws some boxes hit the border; lambda must always match the mask, never the drawn size.
    for seed in range(50):
        mask, lam = mixing.cutmix_box(jax.random.key(seed), 32, 32, alpha=1.0)
        assert float(lam) == pytest.approx(1.0 - float(mask.mean()), abs=1e-7)


def test_smoothing_then_mixing_keeps_targets_distributions_and_smoothing_once(batch):
    images, labels = batch
    smoothed = smooth_targets(labels, NUM_CLASSES, 0.2)
    _, t = mixing.mix_batch(images, smoothed, jax.random.key(0), mixup_alpha=0.8, cutmix_alpha=1.0)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    # Every class not involved in a pair keeps exactly the smoothing floor 0.2 / 10: smoothing applied once.
    involved = np.zeros((8, NUM_CLASSES), bool)
    involved[np.arange(8), np.asarray(labels)] = True
    involved[np.arange(8), np.asarray(labels)[::-1]] = True
    np.testing.assert_allclose(np.asarray(t)[~involved], 0.02, rtol=1e-6)


def test_mix_batch_off_returns_inputs_unchanged(batch):
    images, labels = batch
    targets = smooth_targets(labels, NUM_CLASSES, 0.1)
    key = jax.random.key(0)
    for kwargs in ({}, {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 0.0}):
        x, t = mixing.mix_batch(images, targets, key, **kwargs)
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(t, targets)


def test_mix_batch_under_jit_switches_between_mixup_and_cutmix_and_is_reproducible(batch):
    images, labels = batch
    targets = jax.nn.one_hot(labels, NUM_CLASSES)
    step = jax.jit(lambda x, t, k: mixing.mix_batch(x, t, k, mixup_alpha=0.8, cutmix_alpha=1.0))
    kinds = set()
    for seed in range(12):
        x, t = step(images, targets, jax.random.key(seed))
        x2, _ = step(images, targets, jax.random.key(seed))
        np.testing.assert_array_equal(x, x2)
        values = np.unique(np.asarray(x[0]))
        kinds.add("cutmix" if set(values) <= {0.0, 7.0} and len(values) == 2 else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_random_erasing_writes_one_box_per_image_and_nothing_else():
    images = jnp.full((16, 32, 32, 3), 5.0)
    erased = jax.jit(mixing.random_erasing, static_argnums=2)(images, jax.random.key(0), 1.0)
    assert erased.shape == images.shape and erased.dtype == images.dtype
    changed = np.asarray((erased != 5.0).any(-1))
    for mask in changed:
        rows, cols = np.nonzero(mask)
        assert rows.size > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert rows.size == box, "the erased pixels form one rectangle"
        assert box / mask.size <= mixing.ERASE_MAX_AREA * 1.2


def test_random_erasing_off_or_prob_zero_is_identity():
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    np.testing.assert_array_equal(mixing.random_erasing(images, jax.random.key(0), 0.0), images)
    # prob 0.25 on 64 images: some erased, some not.
    many = jnp.zeros((64, 32, 32, 1))
    changed = np.asarray((mixing.random_erasing(many, jax.random.key(0), 0.25) != 0).any((1, 2, 3)))
    assert 4 <= changed.sum() <= 30


def test_recipe_ops_run_inside_the_trainers_shard_map():
    # The train step runs augmentation per device under shard_map, with device-varying keys.
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jax_vit.randaugment import rand_augment

    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])

    def per_device(images, labels):
        key = jax.random.fold_in(jax.random.key(0), jax.lax.axis_index("data"))
        images = rand_augment(images, key, num_ops=2, magnitude=9.0).astype(jnp.float32)
        images = mixing.random_erasing(images, key, 0.5)
        return mixing.mix_batch(images, smooth_targets(labels, NUM_CLASSES, 0.1), key,
                                mixup_alpha=0.8, cutmix_alpha=1.0)

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data")))
    sharding = NamedSharding(mesh, P("data"))
    images = jax.device_put(np.zeros((8, 32, 32, 3), np.uint8), sharding)
    x, t = step(images, jax.device_put(np.arange(8) % NUM_CLASSES, sharding))
    assert x.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
