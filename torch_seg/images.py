"""Reading images into the chain's currency: (H, W, 3) uint8 RGB NumPy arrays."""
from __future__ import annotations

import io
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from torch_seg.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Masks are kept at full resolution (one bool per pixel per object) and the overlay is drawn at full size,
# so a 50 MP photo already costs about 150 MB per copy; beyond that, ask the user to downscale.
MAX_IMAGE_PIXELS = 50_000_000
URL_TIMEOUT_S = 20


def _is_url(path_or_url: str | Path) -> bool:
    return str(path_or_url).startswith(("http://", "https://"))


def _read_bytes(path_or_url: str | Path) -> bytes:
    if _is_url(path_or_url):
        try:
            with urllib.request.urlopen(str(path_or_url), timeout=URL_TIMEOUT_S) as response:
                return response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise UserError(f"could not download {path_or_url} ({e}): check the URL, or download the image "
                            f"and pass its local path") from None
    path = Path(path_or_url)
    if not path.is_file():
        raise UserError(f"image not found: {path} (check the path)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e.strerror} (check its permissions)") from None


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB: 16-bit and float are rescaled, alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit int / float) grayscale: scale the data range to 0..255 rather than clipping,
        # which would turn most 16-bit photos white.
        data = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = max(float(data.max()), 1e-12)
        elif image.mode.startswith("I;16") or data.max() > 255:
            top = 65535.0
        else:
            top = 255.0
        gray = np.clip(np.rint(data / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Fully transparent pixels often hold arbitrary colours; compositing on white shows what a viewer shows.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_image(path_or_url: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a local file or an http(s) URL into (H, W, 3) uint8 RGB, honouring EXIF orientation.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted. Unreadable, non-image and over-large
    files raise UserError (the size is checked from the header, before the pixels are decoded).
    """
    return decode_image(_read_bytes(path_or_url), path_or_url, max_pixels=max_pixels)


def decode_image(data: bytes, source: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """`load_image` for a file's contents already in memory (an upload); `source` names it in messages."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(f"{source} is {width}x{height} ({width * height / 1e6:.0f} MP), more than "
                                f"the {max_pixels / 1e6:.0f} MP limit: downscale it first")
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_uint8(image)
    except UnidentifiedImageError:
        raise UserError(f"{source} is not an image PIL can read (use JPEG, PNG, BMP, TIFF or WebP)") from None
    except Image.DecompressionBombError:
        raise UserError(f"{source} is too large to decode safely: downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{source} is corrupt or truncated ({e}): re-export or re-download it") from None


def list_images(directory: str | Path) -> list[Path]:
    """The image files directly inside `directory`, sorted by name (UserError if there are none)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"image folder not found: {directory} (check --image-dir)")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return paths


def image_stem(path_or_url: str | Path) -> str:
    """The output folder name for an image: its file stem (for a URL, the last path segment's stem)."""
    text = str(path_or_url)
    if _is_url(text):
        text = urllib.parse.urlparse(text).path.rstrip("/") or "image"
    return Path(text).stem or "image"


def output_names(sources: list[str | Path]) -> list[str]:
    """One output folder name per image, all distinct: the stem, or stem_2, stem_3, ... once it is taken.

    photo.jpg, photo.png and photo_2.jpg give photo, photo_2 and photo_2_2: no result replaces another.
    """
    taken: set[str] = set()
    names = []
    for source in sources:
        stem = name = image_stem(source)
        copy = 1
        while name in taken:
            copy += 1
            name = f"{stem}_{copy}"
        taken.add(name)
        names.append(name)
    return names
