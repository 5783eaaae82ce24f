"""The recipe ops wired into the trainer's `augment`: off by default, on from the config."""
import dataclasses

import jax
import numpy as np

from jax_vit.augment import augment
from jax_vit.configs import PRESETS, Config, get_config

RECIPE_FIELDS = {"randaugment_ops": 0, "trivial_augment": False, "random_erasing": 0.0, "mixup_alpha": 0.0,
                 "cutmix_alpha": 0.0}


def _batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), np.arange(8) % 10


def test_recipe_augmentations_are_off_in_every_write_up_and_test_preset():
    for name, preset in PRESETS.items():
        if name in ("best", "heavy-aug"):
            continue
        assert {k: getattr(preset, k) for k in RECIPE_FIELDS} == RECIPE_FIELDS, name


def test_best_preset_turns_on_what_the_measurements_support():
    best = get_config("best")
    assert best.mixup_alpha > 0 and best.cutmix_alpha > 0 and best.ema_decay > 0 and best.drop_path_rate == 0.1
    assert best.randaugment_ops == 0 and best.random_erasing == 0.0, "measured no help at 150 epochs"
    heavy = get_config("heavy-aug")
    assert heavy.randaugment_ops > 0 and heavy.random_erasing > 0 and heavy.mixup_alpha > 0
    # Both keep the first write-up's model and optimiser: the comparison isolates the recipe.
    for preset in (best, heavy):
        for field in ("width", "depth", "patch_size", "learning_rate", "batch_size", "weight_decay"):
            assert getattr(preset, field) == getattr(PRESETS["seed-384x8"], field), field


def test_all_recipe_ops_on_give_valid_images_and_target_distributions():
    images, labels = _batch()
    config = get_config("tiny").replace(randaugment_ops=2, random_erasing=0.5, mixup_alpha=0.8, cutmix_alpha=1.0)
    x, t = jax.jit(lambda i, l, k: augment(i, l, k, config))(images, labels, jax.random.key(0))
    assert x.shape == images.shape and x.dtype == np.float32 and np.isfinite(np.asarray(x)).all()
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    plain_x, plain_t = augment(images, labels, jax.random.key(0), get_config("tiny"))
    assert not np.array_equal(np.asarray(x), np.asarray(plain_x))
    assert not np.array_equal(np.asarray(t), np.asarray(plain_t)), "mixing changed the targets"
