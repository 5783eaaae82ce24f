"""SAM 2.1 from Meta's `sam2` package: build the model, encode an image once, predict one mask per prompt."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import contextlib
import pickle
from typing import Iterator

import numpy as np
import torch

from torch_seg._deps import require
from torch_seg.checkpoints import DEFAULT_SAM2_MODEL, resolve_sam2_checkpoint, sam2_config
from torch_seg.device import autocast
from torch_seg.errors import UserError

RANDOM_WEIGHTS_SEED = 0  # random-weight models are reproducible from run to run


def build_sam2_model(model_name: str = DEFAULT_SAM2_MODEL, checkpoint=None, device="cpu",
                     random_weights: bool = False) -> torch.nn.Module:
    """The real SAM 2.1 architecture for `model_name` (tiny|small|base_plus|large), in eval mode on `device`.

    With `random_weights` no checkpoint is read; otherwise `checkpoint` (or the default local file) must exist.
    """
    require("sam2.build_sam")  # sam2 is not in the [seg] extra (see torch_seg/_deps.py)
    from sam2.build_sam import build_sam2

    config = sam2_config(model_name)
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return build_sam2(config, ckpt_path=None, device=str(device))
    path = resolve_sam2_checkpoint(model_name, checkpoint)
    with sam2_checkpoint_errors(path, model_name):
        return build_sam2(config, ckpt_path=str(path), device=str(device))


@contextlib.contextmanager
def sam2_checkpoint_errors(path, model_name: str) -> Iterator[None]:
    """Turn what sam2 raises for a file that is not a SAM 2.1 `model_name` checkpoint into one line naming the fix.

    sam2 raises a bare RuntimeError on mismatched keys and KeyError without a "model" entry; torch.load
    raises UnpicklingError for a file that is not a torch archive (an HTML error page saved as .pt, another
    model's pickled checkpoint) and EOFError/RuntimeError for a truncated one.
    """
    try:
        yield
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a SAM 2.1 {model_name} checkpoint ({type(e).__name__}: {str(e)[:120]}): "
                        f"check --sam2-model / --sam2-checkpoint or re-download it") from None


class SamPredictor:
    """SAM 2 image predictor: `set_image` once, then every box (and point) prompt in one `predict` call."""

    def __init__(self, model: torch.nn.Module):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model)
        self.device = next(model.parameters()).device
        self._image_size: tuple[int, int] | None = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Run the image encoder on an (H, W, 3) uint8 RGB image."""
        with autocast(self.device):
            self.predictor.set_image(image)
        self._image_size = image.shape[:2]

    @torch.inference_mode()
    def predict(self, boxes_xyxy: np.ndarray | None = None, points_xy: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per prompt: boxes (N, 4) pixel xyxy and/or positive points (N, K, 2) pixel xy.

        Returns masks (N, H, W) bool at the image's size and SAM's predicted IoU scores (N,) float32.
        """
        if self._image_size is None:
            raise RuntimeError("set_image must be called before predict")
        height, width = self._image_size
        n = len(boxes_xyxy) if boxes_xyxy is not None else (len(points_xy) if points_xy is not None else 0)
        if n == 0:
            return np.zeros((0, height, width), dtype=bool), np.zeros((0,), dtype=np.float32)
        point_labels = None
        if points_xy is not None:
            points_xy = np.asarray(points_xy, dtype=np.float32).reshape(n, -1, 2)
            point_labels = np.ones(points_xy.shape[:2], dtype=np.int32)
        with autocast(self.device):
            # One prompt per object is unambiguous, so a single mask each (SAM 2's demo does the same for boxes).
            masks, scores, _ = self.predictor.predict(
                point_coords=points_xy, point_labels=point_labels,
                box=None if boxes_xyxy is None else np.asarray(boxes_xyxy, dtype=np.float32),
                multimask_output=False)
        # sam2 squeezes the batch axis away when there is a single prompt: (1, H, W) vs (N, 1, H, W).
        masks = np.asarray(masks).reshape(n, height, width) > 0
        scores = np.asarray(scores, dtype=np.float32).reshape(n)
        return masks, scores
