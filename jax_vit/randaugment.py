"""RandAugment and TrivialAugment on image batches, in pure jnp, inside jit.

Every image in a batch draws its own ops, signs and magnitudes, vmapped over the batch: each image
computes every op and keeps the one it drew (what `jax.lax.switch` does under vmap; at 32x32 this costs far
less than the ViT forward pass).

Images are uint8 in [0, 255] or floats in [0, 1]; the ops work on float32 pixel values in [0, 255] (the
scale the PIL definitions use) and the result comes back in the input's dtype.

The op set is torchvision's RandAugment set (the 14 ops of the RandAugment paper less `invert`). Their
ranges follow the paper and timm, with geometric ranges chosen for 32x32 images: a translation of 45% of
the width (timm's default for 224 px) would push most of a CIFAR object out of the frame, so the largest
translation here is 10 px, as in AutoAugment's CIFAR policy. Magnitude is on the paper's 0..10 scale;
at magnitude 0 every op that takes a magnitude is the identity (autocontrast and equalize take none).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

MAX_MAGNITUDE = 10.0  # the RandAugment paper's scale: M in [0, 10]
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRACTION = 10.0 / 32.0
MAX_ENHANCE = 0.9  # brightness/color/contrast/sharpness factor in [0.1, 1.9]
MAX_POSTERIZE_DROP = 4  # keep 8 bits at level 0, down to 4 bits at level 1
FILL = 128.0  # mid-grey for pixels a geometric op brings in from outside the frame

# An op takes one image (H, W, C) as float32 in [0, 255] and a level in [-1, 1] (magnitude / MAX_MAGNITUDE
# with a random sign); ops without a direction use |level|.
Op = Callable[[jax.Array, jax.Array], jax.Array]


def _grayscale(image: jax.Array) -> jax.Array:
    if image.shape[-1] == 1:
        return image
    # ITU-R 601-2 luma, as PIL's convert("L").
    luma = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    return jnp.broadcast_to(luma[..., None], image.shape)


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL's ImageEnhance: factor 1 is the image, 0 the degenerate image, above 1 extrapolates."""
    return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _affine(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Output pixel p (row, col) samples the input at centre + matrix @ (p - centre) - offset (bilinear)."""
    height, width, channels = image.shape
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
    points = jnp.stack([rows.ravel(), cols.ravel()]) - centre[:, None]
    source = matrix @ points + centre[:, None] - offset[:, None]
    src_rows = jnp.broadcast_to(source[0].reshape(height, width, 1), image.shape)
    src_cols = jnp.broadcast_to(source[1].reshape(height, width, 1), image.shape)
    chans = jnp.broadcast_to(jnp.arange(channels, dtype=jnp.float32), image.shape)
    return jax.scipy.ndimage.map_coordinates(image, [src_rows, src_cols, chans], order=1, mode="constant",
                                             cval=FILL)


def identity(image, level):
    return image


def autocontrast(image, level):
    """Stretch each channel to the full [0, 255] range; flat channels are left alone."""
    low = image.min(axis=(0, 1), keepdims=True)
    high = image.max(axis=(0, 1), keepdims=True)
    scale = jnp.where(high > low, 255.0 / jnp.maximum(high - low, 1e-6), 1.0)
    offset = jnp.where(high > low, low, 0.0)
    return jnp.clip((image - offset) * scale, 0.0, 255.0)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    # PIL's ImageOps.equalize: a lookup table from the cumulative histogram, step set by all but the
    # brightest populated bin; a channel with a single populated bin is left alone.
    values = jnp.clip(jnp.round(channel), 0, 255).astype(jnp.int32)
    histogram = jnp.bincount(values.ravel(), length=256)
    last = histogram[values.max()]
    step = (values.size - last) // 255
    cumulative = jnp.cumsum(histogram) - histogram  # pixels strictly darker than each value
    lut = jnp.clip((cumulative + step // 2) // jnp.maximum(step, 1), 0, 255).astype(jnp.float32)
    return jnp.where(step > 0, lut[values], channel)


def equalize(image, level):
    return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image)


def rotate(image, level):
    angle = jnp.deg2rad(level * MAX_ROTATE_DEGREES)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return _affine(image, jnp.array([[cos, -sin], [sin, cos]]), jnp.zeros(2))


def shear_x(image, level):
    return _affine(image, jnp.array([[1.0, 0.0], [level * MAX_SHEAR, 1.0]]), jnp.zeros(2))


def shear_y(image, level):
    return _affine(image, jnp.array([[1.0, level * MAX_SHEAR], [0.0, 1.0]]), jnp.zeros(2))


def translate_x(image, level):
    shift = level * MAX_TRANSLATE_FRACTION * image.shape[1]
    return _affine(image, jnp.eye(2), jnp.stack([0.0, shift]))


def translate_y(image, level):
    shift = level * MAX_TRANSLATE_FRACTION * image.shape[0]
    return _affine(image, jnp.eye(2), jnp.stack([shift, 0.0]))


def solarize(image, level):
    # Invert pixels at or above the threshold; 256 at level 0 inverts nothing.
    threshold = 256.0 * (1.0 - jnp.abs(level))
    return jnp.where(image >= threshold, 255.0 - image, image)


def posterize(image, level):
    drop = jnp.round(jnp.abs(level) * MAX_POSTERIZE_DROP)
    quantum = 2.0 ** drop
    return jnp.floor(image / quantum) * quantum


def brightness(image, level):
    return _blend(jnp.zeros_like(image), image, 1.0 + level * MAX_ENHANCE)


def color(image, level):
    return _blend(_grayscale(image), image, 1.0 + level * MAX_ENHANCE)


def contrast(image, level):
    mean = _grayscale(image)[..., 0].mean()
    return _blend(jnp.full_like(image, mean), image, 1.0 + level * MAX_ENHANCE)


def sharpness(image, level):
    # PIL's SMOOTH filter (centre weight 5, neighbours 1, /13) on the interior; the border is kept.
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    neighbours = sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))
    smooth = (neighbours + 4.0 * image) / 13.0
    interior = jnp.zeros(image.shape[:2], bool).at[1:-1, 1:-1].set(True)[..., None]
    degenerate = jnp.where(interior, smooth, image)
    return _blend(degenerate, image, 1.0 + level * MAX_ENHANCE)


OPS: dict[str, Op] = {
    "identity": identity,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
    "solarize": solarize,
    "color": color,
    "posterize": posterize,
    "contrast": contrast,
    "brightness": brightness,
    "sharpness": sharpness,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
}
DEFAULT_OPS: tuple[str, ...] = tuple(OPS)


def _check_ops(ops: Sequence[str]) -> tuple[Op, ...]:
    unknown = [name for name in ops if name not in OPS]
    if unknown or not ops:
        raise ValueError(f"unknown augmentation ops {unknown}; choose from: {', '.join(OPS)}")
    return tuple(OPS[name] for name in ops)


def _to_pixels(images: jax.Array) -> jax.Array:
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32)
    return images.astype(jnp.float32) * 255.0


def _from_pixels(pixels: jax.Array, dtype) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.clip(jnp.round(pixels), 0, 255).astype(dtype)
    return (pixels / 255.0).astype(dtype)


def _apply_random_op(branches, image, key, level_fn):
    op_key, sign_key, level_key = jax.random.split(key, 3)
    index = jax.random.randint(op_key, (), 0, len(branches))
    sign = jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0)
    level = jnp.clip(level_fn(level_key), 0.0, 1.0) * sign
    # Every op, then the drawn one: what `lax.switch` under vmap does anyway, written out because vmap of a
    # switch inside the trainer's shard_map trips jax 0.10's varying-axes check.
    outputs = jnp.stack([op(image, level) for op in branches])
    return outputs[index]


def rand_augment(images: jax.Array, key: jax.Array, *, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.0, ops: Sequence[str] = DEFAULT_OPS) -> jax.Array:
    """RandAugment (Cubuk et al. 2020): `num_ops` ops drawn uniformly per image, at `magnitude` in [0, 10].

    `magnitude_std` > 0 draws each op's magnitude from a normal around `magnitude` (timm's `mstd`).
    `num_ops=0` returns the images unchanged.
    """
    if num_ops == 0:
        return images
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude {magnitude} is outside [0, {MAX_MAGNITUDE:g}]")
    branches = _check_ops(ops)

    def level_fn(level_key):
        noise = magnitude_std * jax.random.normal(level_key) if magnitude_std > 0 else 0.0
        return (magnitude + noise) / MAX_MAGNITUDE

    def one_image(image, image_key):
        for op_key in jax.random.split(image_key, num_ops):
            image = _apply_random_op(branches, image, op_key, level_fn)
        return image

    keys = jax.random.split(key, images.shape[0])
    return _from_pixels(jax.vmap(one_image)(_to_pixels(images), keys), images.dtype)


def trivial_augment(images: jax.Array, key: jax.Array, *, ops: Sequence[str] = DEFAULT_OPS) -> jax.Array:
    """TrivialAugment (Mueller & Hutter 2021): one op per image at a magnitude uniform in [0, 10].

    Uses the RandAugment ranges above (the paper's "TA (RA)" variant), not torchvision's wider ones.
    """
    branches = _check_ops(ops)

    def one_image(image, image_key):
        return _apply_random_op(branches, image, image_key, jax.random.uniform)

    keys = jax.random.split(key, images.shape[0])
    return _from_pixels(jax.vmap(one_image)(_to_pixels(images), keys), images.dtype)


def apply_op(images: jax.Array, name: str, magnitude: float) -> jax.Array:
    """One named op on every image at a signed magnitude in [-10, 10] (for tests and for looking at ops)."""
    (op,) = _check_ops([name])
    level = jnp.float32(magnitude / MAX_MAGNITUDE)
    return _from_pixels(jax.vmap(lambda image: op(image, level))(_to_pixels(images)), images.dtype)
