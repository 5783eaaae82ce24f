"""Region seeders: text + image -> boxes (and points) for SAM 2. `build_seeder` picks one by name."""
from __future__ import annotations

from torch_seg._deps import require
from torch_seg.errors import UserError
from torch_seg.seeders.base import Detections, Seeder
from torch_seg.seeders.gdino import DEFAULT_BOX_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_TEXT_THRESHOLD

SEEDERS = ("gdino", "clipseg")

__all__ = ["Detections", "Seeder", "SEEDERS", "build_seeder", "DEFAULT_BOX_THRESHOLD", "DEFAULT_TEXT_THRESHOLD"]


def build_seeder(name: str = "gdino", *, checkpoint=None, text_encoder=None, device="cpu", random_weights=False,
                 box_threshold: float = DEFAULT_BOX_THRESHOLD, text_threshold: float = DEFAULT_TEXT_THRESHOLD,
                 model_name: str | None = None, max_detections: int = DEFAULT_MAX_DETECTIONS, **options) -> Seeder:
    """Build a seeder once per run. `checkpoint` is the GroundingDINO file or the CLIPSeg folder;
    `model_name` picks swin_t|swin_b for gdino; `options` go to the seeder (e.g. resize_shortest for tests)."""
    if name == "gdino":
        require("groundingdino")  # not in the [seg] extra (see torch_seg/_deps.py)
        from torch_seg.seeders.gdino import DEFAULT_GDINO_MODEL, GroundingDinoSeeder

        return GroundingDinoSeeder(model_name or DEFAULT_GDINO_MODEL, checkpoint=checkpoint, text_encoder=text_encoder,
                                   device=device, random_weights=random_weights, box_threshold=box_threshold,
                                   text_threshold=text_threshold, max_detections=max_detections, **options)
    if name == "clipseg":
        from torch_seg.seeders.clipseg import ClipSegSeeder

        return ClipSegSeeder(checkpoint=checkpoint, device=device, random_weights=random_weights,
                             box_threshold=box_threshold, max_detections=max_detections, **options)
    raise UserError(f"unknown seeder {name!r}: use one of {', '.join(SEEDERS)}")
