"""Mixup, CutMix and random erasing on (normalised images, soft targets), inside jit.

Label smoothing comes first and mixing second: each image's hard label is smoothed on its own
(`jax_vit.augment.smooth_targets`), then the two smoothed targets are mixed with the same weight as the
pixels (as timm's `Mixup` does). Both steps are linear, so this equals smoothing the mixed targets; the ways
to get it wrong are smoothing twice (once here and again inside the loss), dropping the smoothing when
mixing hard labels, or weighting the targets by a lambda the pixels did not get. The loss must therefore be
plain cross-entropy against these targets.

Both mixes pair each image with the one at the mirrored position of the batch (`batch[::-1]`), one weight
per batch, as timm's default batch mode. CutMix's weight is taken from the box actually pasted: a box
clipped at the border covers less than the drawn lambda asked for, and the targets follow the pixels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Random erasing (Zhong et al. 2020, timm's defaults): area fraction and aspect-ratio range of the box.
ERASE_MIN_AREA = 0.02
ERASE_MAX_AREA = 1.0 / 3.0
ERASE_MIN_ASPECT = 0.3


def mixup(images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float):
    """Mixup (Zhang et al. 2018): x = lam x_i + (1 - lam) x_j, same for the targets, lam ~ Beta(a, a)."""
    lam = jax.random.beta(key, alpha, alpha)
    mixed = lam * images + (1.0 - lam) * images[::-1]
    return mixed.astype(images.dtype), lam * targets + (1.0 - lam) * targets[::-1]


def cutmix_box(key: jax.Array, height: int, width: int, alpha: float):
    """A box (mask of shape (height, width), True inside) and the fraction of the image it leaves untouched.

    The box's sides are sqrt(1 - lam) of the image's, centred uniformly, clipped at the border
    (Yun et al. 2019); the returned lambda is 1 - (clipped box area) / (image area).
    """
    lam_key, row_key, col_key = jax.random.split(key, 3)
    lam = jax.random.beta(lam_key, alpha, alpha)
    cut = jnp.sqrt(1.0 - lam)
    box_h, box_w = jnp.round(cut * height), jnp.round(cut * width)
    centre_row = jax.random.randint(row_key, (), 0, height)
    centre_col = jax.random.randint(col_key, (), 0, width)
    top = jnp.clip(centre_row - box_h // 2, 0, height)
    bottom = jnp.clip(centre_row + box_h // 2 + box_h % 2, 0, height)
    left = jnp.clip(centre_col - box_w // 2, 0, width)
    right = jnp.clip(centre_col + box_w // 2 + box_w % 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    mask = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return mask, 1.0 - mask.mean()


def cutmix(images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float):
    """CutMix: paste a box from the paired image; targets weighted by the pixel areas actually used."""
    mask, lam = cutmix_box(key, images.shape[1], images.shape[2], alpha)
    mixed = jnp.where(mask[None, :, :, None], images[::-1], images)
    return mixed, lam * targets + (1.0 - lam) * targets[::-1]


def mix_batch(images: jax.Array, targets: jax.Array, key: jax.Array, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, mix_prob: float = 1.0, switch_prob: float = 0.5):
    """Mixup or CutMix on the whole batch with probability `mix_prob`.

    With both alphas above zero, CutMix is chosen with probability `switch_prob` (timm's default 0.5);
    with one of them zero, only the other is used; with both zero (or `mix_prob` 0) nothing changes.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or mix_prob <= 0:
        return images, targets
    apply_key, switch_key, mix_key = jax.random.split(key, 3)
    branches = []
    if mixup_alpha > 0:
        branches.append(lambda x, t: mixup(x, t, mix_key, mixup_alpha))
    if cutmix_alpha > 0:
        branches.append(lambda x, t: cutmix(x, t, mix_key, cutmix_alpha))
    # Selected with `where`, not `lax.cond`: cond needs both branches to agree on which values vary over
    # the trainer's shard_map devices, and the unmixed inputs need not.
    def select(flag, a, b):
        return tuple(jnp.where(flag, x, y) for x, y in zip(a, b))

    mixed = branches[0](images, targets)
    if len(branches) == 2:
        mixed = select(jax.random.bernoulli(switch_key, switch_prob), branches[1](images, targets), mixed)
    return select(jax.random.bernoulli(apply_key, mix_prob), mixed, (images, targets))


def _erase_one(image: jax.Array, key: jax.Array, prob: float) -> jax.Array:
    apply_key, area_key, aspect_key, row_key, col_key, noise_key = jax.random.split(key, 6)
    height, width = image.shape[:2]
    area = jax.random.uniform(area_key, minval=ERASE_MIN_AREA, maxval=ERASE_MAX_AREA) * height * width
    log_aspect = jax.random.uniform(aspect_key, minval=jnp.log(ERASE_MIN_ASPECT),
                                    maxval=-jnp.log(ERASE_MIN_ASPECT))
    aspect = jnp.exp(log_aspect)
    # One draw, clipped to the frame (timm retries up to 10 times instead; one clipped draw is jit-friendly).
    box_h = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, height).astype(jnp.int32)
    box_w = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, width).astype(jnp.int32)
    top = jax.random.randint(row_key, (), 0, height - box_h + 1)
    left = jax.random.randint(col_key, (), 0, width - box_w + 1)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    inside = inside & jax.random.bernoulli(apply_key, prob)
    # Per-pixel normal noise: in normalised space that looks like the data's own statistics (timm's "pixel").
    noise = jax.random.normal(noise_key, image.shape, jnp.float32).astype(image.dtype)
    return jnp.where(inside[:, :, None], noise, image)


def random_erasing(images: jax.Array, key: jax.Array, prob: float) -> jax.Array:
    """Random erasing (Zhong et al. 2020): with probability `prob` per image, a box of noise.

    For normalised float images; the box covers 2% to 33% of the image with aspect ratio in [0.3, 3.3].
    """
    if prob <= 0:
        return images
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(_erase_one, in_axes=(0, 0, None))(images, keys, prob)
