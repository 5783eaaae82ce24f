"""On-device input pipeline: uint8 images in, normalised floats and soft targets out, inside jit.

`augment` is the one place training inputs are made. It runs per device inside the train step, so the
whole dataset can stay on the accelerator as uint8 and input never stalls it. It returns *target
distributions* rather than integer labels, so the batch-mixing augmentations (Mixup, CutMix, in mixing.py)
run here, after normalisation, without touching the loss or the step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_vit.configs import Config
from jax_vit.data import DATASETS
from jax_vit.mixing import mix_batch, random_erasing
from jax_vit.randaugment import rand_augment, trivial_augment


# The statistics pretrained models were trained with (config.input_norm), per RGB channel in [0, 1].
PRETRAINED_NORMALIZATION = {
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalization(config: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of `config.input_norm`: the dataset's own, or a pretrained model's (averaged over
    RGB for a one-channel dataset)."""
    if config.input_norm == "dataset":
        info = DATASETS[config.dataset]
        return info.mean, info.std
    mean, std = PRETRAINED_NORMALIZATION[config.input_norm]
    if config.in_channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return mean, std


def normalize(images: jax.Array, config: Config) -> jax.Array:
    """uint8 (B, H, W, C) -> float32, per-channel standardised with `normalization(config)`."""
    mean, std = normalization(config)
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def resize_to_model(images: jax.Array, config: Config) -> jax.Array:
    """Float images (B, H, W, C) -> (B, R, R, C) at the model's `input_size`, bilinear (half-pixel centres, as
    tf.image.resize in the ViT authors' pipeline); a no-op where the sizes already agree. Resizing commutes
    with `normalize` (its weights sum to 1), so it runs after it, on floats."""
    size = config.input_size
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), method="bilinear")


def model_inputs(images: jax.Array, config: Config) -> jax.Array:
    """uint8 images -> what the model takes: normalised floats at its input size (evaluation's path)."""
    return resize_to_model(normalize(images, config), config)


def smooth_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """Integer labels -> one-hot rows with `label_smoothing` spread evenly over all classes."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Zero-pad each side by `padding` pixels, then cut a random window of the original size per image."""
    if padding == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirror each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment(images: jax.Array, labels: jax.Array, key: jax.Array, config: Config) -> tuple[jax.Array, jax.Array]:
    """Training inputs for one device's shard of the batch.

    images: uint8 (B, H, W, C); labels: int (B,); key: this device's key for this step.
    Returns (float32 normalised images (B, R, R, C) at the model's input size R (H unless config.resolution
    says otherwise), float32 target distributions (B, num_classes)).
    Geometric augmentations work on uint8 pixels; the batch-level ones (Mixup/CutMix) come last, after
    normalisation, where they mix images and targets together.
    """
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(images, crop_key, config.crop_padding)
    if config.random_flip:
        images = random_flip(images, flip_key)
    # Further keys are folded in rather than split off, so crop and flip draw exactly as before.
    if config.trivial_augment:
        images = trivial_augment(images, jax.random.fold_in(key, 1))
    elif config.randaugment_ops > 0:
        images = rand_augment(images, jax.random.fold_in(key, 1), num_ops=config.randaugment_ops,
                              magnitude=config.randaugment_magnitude)
    targets = smooth_targets(labels, config.num_classes, config.label_smoothing)
    # Crop and flip ran on the small uint8 images; only now do they grow to the model's size (fine-tuning).
    images = model_inputs(images, config)
    images = random_erasing(images, jax.random.fold_in(key, 2), config.random_erasing)
    # Smooth first, then mix the smoothed targets with the pixels' own weights (see jax_vit/mixing.py).
    return mix_batch(images, targets, jax.random.fold_in(key, 3), mixup_alpha=config.mixup_alpha,
                     cutmix_alpha=config.cutmix_alpha, mix_prob=config.mix_prob,
                     switch_prob=config.mix_switch_prob)
