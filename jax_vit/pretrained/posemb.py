"""Position embeddings for another patch grid: the CLS position kept, the grid interpolated in 2-D.

As the ViT authors fine-tune at a resolution other than pre-training's (vit_jax/checkpoint.py
`interpolate_posembed`): the (grid, grid, width) table resampled with `scipy.ndimage.zoom(order=1)`, bilinear
with the corner positions mapped onto each other, so an embedding that varies linearly over the grid stays
exactly linear. (timm resamples bicubically with antialiasing and transformers bicubically: different numbers
at a changed grid, the same at an unchanged one, where all three leave the table alone.)
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage


def resize_posemb(posemb: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, width) -> (1, 1 + grid*grid, width); the input itself when g == grid (bit-identical)."""
    old = int(round(np.sqrt(posemb.shape[1] - 1)))
    if old * old != posemb.shape[1] - 1:
        raise ValueError(f"position embedding of shape {posemb.shape} is not one CLS position plus a square grid")
    if old == grid:
        return posemb
    cls, table = posemb[:, :1], posemb[0, 1:].reshape(old, old, -1)
    zoomed = scipy.ndimage.zoom(table, (grid / old, grid / old, 1), order=1)
    if zoomed.shape[:2] != (grid, grid):  # zoom rounds its output shape; never expected for integer grids
        raise ValueError(f"zoom gave a {zoomed.shape[:2]} grid, not {grid}x{grid}")
    return np.concatenate([cls, zoomed.reshape(1, grid * grid, -1).astype(posemb.dtype)], axis=1)
