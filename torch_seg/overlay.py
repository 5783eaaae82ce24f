"""The overlay picture: each mask in its own colour, its box, and its label with scores."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_ALPHA = 0.45


def palette(n: int) -> np.ndarray:
    """n distinct, saturated colours (hues spaced by the golden ratio, so neighbours never look alike)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.12) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_overlay(image: np.ndarray, masks: np.ndarray, boxes_xyxy: np.ndarray, labels: list[str],
                 box_scores: np.ndarray | None = None, mask_scores: np.ndarray | None = None, *,
                 colours: np.ndarray | None = None, banner: str | None = None) -> np.ndarray:
    """Return a new (H, W, 3) uint8 image; `image` is left untouched. Objects are drawn largest first so
    small ones stay visible on top. `colours` (N, 3) defaults to `palette(N)` in list order; a video passes
    colours looked up by object id so that an object keeps its colour from frame to frame. `banner`
    (e.g. "RANDOM WEIGHTS") is written in the bottom-left corner."""
    height, width = image.shape[:2]
    out = image.astype(np.float32)
    colours = palette(len(labels)) if colours is None else np.asarray(colours)
    areas = [int(m.sum()) for m in masks]
    order = sorted(range(len(labels)), key=lambda i: -areas[i])
    for i in order:
        mask = np.asarray(masks[i], dtype=bool)
        out[mask] = out[mask] * (1 - MASK_ALPHA) + colours[i] * MASK_ALPHA
    canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(height, width) / 300))
    font = _font(max(12, round(min(height, width) / 40)))
    for i in order:
        colour = tuple(int(c) for c in colours[i])
        x0, y0, x1, y1 = (float(v) for v in boxes_xyxy[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = labels[i] if box_scores is None else f"{labels[i]} {float(box_scores[i]):.2f}"
        if mask_scores is not None:
            text += f" | mask {float(mask_scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        # Label above the box when there is room, else inside its top edge.
        ty = y0 - th - 2 * line if y0 - th - 2 * line >= 0 else y0
        tx = min(max(x0, 0), max(width - tw - 2 * line, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=colour)
        draw.text((tx + line - left, ty + line - top), text, fill=(0, 0, 0), font=font)
    if banner:
        # Bottom-left: labels of boxes touching the top edge sit at the top and must stay readable.
        left, top, right, bottom = draw.textbbox((0, 0), banner, font=font)
        y = height - (bottom - top + 4 * line)
        draw.rectangle([0, y, right - left + 4 * line, height], fill=(200, 0, 0))
        draw.text((2 * line - left, y + 2 * line - top), banner, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
