"""GroundingDINO (groundingdino-py) as a region seeder: text prompt -> pixel boxes, scores and phrases."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import contextlib
import io
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from torch_seg import _transformers_compat
from torch_seg.boxes import cxcywh_normalized_to_xyxy_pixels
from torch_seg.checkpoints import (DEFAULT_GDINO_MODEL, GDINO_MODELS, gdino_config_path, resolve_gdino_checkpoint,
                                   resolve_text_encoder, sha256_of)
from torch_seg.device import autocast
from torch_seg.errors import UserError
from torch_seg.prompts import caption_from_phrases, parse_prompt, phrase_spans
from torch_seg.seeders.base import Detections, check_thresholds

DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
DEFAULT_MAX_DETECTIONS = 100  # GroundingDINO has 900 queries; a low threshold must not ask SAM for 900 masks
RANDOM_WEIGHTS_SEED = 0
# GroundingDINO's own preprocessing: shorter side 800, longer side at most 1333, ImageNet normalisation.
RESIZE_SHORTEST, RESIZE_MAX = 800, 1333
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@contextlib.contextmanager
def _bert_from_config_only():
    """Build BERT from the folder's config.json alone: the GroundingDINO checkpoint carries the BERT weights,
    so the folder need not (groundingdino-py would otherwise demand a BERT weights file there)."""
    import groundingdino.util.get_tokenlizer as get_tokenlizer
    from transformers import BertConfig, BertModel

    original = get_tokenlizer.get_pretrained_language_model
    get_tokenlizer.get_pretrained_language_model = lambda folder: BertModel(BertConfig.from_pretrained(folder))
    try:
        yield
    finally:
        get_tokenlizer.get_pretrained_language_model = original


def _load_state_dict(path: Path, model_name: str) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Older official checkpoints pickle more than tensors; only unpickle fully a file we can vouch for.
        expected = GDINO_MODELS[model_name][1].sha256
        if expected is None or sha256_of(path) != expected:
            raise UserError(f"{path} holds pickled objects and is not the official {model_name} checkpoint: "
                            f"re-download it with python scripts/download_checkpoints.py") from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint ({str(e)[:100]}): re-download it") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no GroundingDINO state dict: check --gdino-checkpoint")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_gdino_model(model_name: str = DEFAULT_GDINO_MODEL, checkpoint=None, text_encoder=None, device="cpu",
                      random_weights: bool = False) -> tuple[torch.nn.Module, Path | None, Path]:
    """The real GroundingDINO architecture (Swin-T OGC or Swin-B) in eval mode.

    Returns (model, checkpoint path or None, text encoder folder). With `random_weights` nothing is read but
    the tokenizer/config folder (written offline when `text_encoder` is None).
    """
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    _transformers_compat.install()  # groundingdino's BERT wrapper predates transformers 5
    config_path = gdino_config_path(model_name)
    ckpt_path = None if random_weights else resolve_gdino_checkpoint(model_name, checkpoint)
    text_encoder = resolve_text_encoder(text_encoder, random_weights)
    args = SLConfig.fromfile(str(config_path))
    args.device = str(device)
    args.text_encoder_type = str(text_encoder)
    # groundingdino-py prints the text encoder path on every build; keep the terminal for our own messages.
    with _bert_from_config_only(), contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = build_model(args)
    if ckpt_path is not None:
        missing, _ = model.load_state_dict(_load_state_dict(ckpt_path, model_name), strict=False)
        # The demo loads with strict=False too; buffers that transformers recreates are the only allowed gaps.
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing:
            raise UserError(f"{ckpt_path} does not match GroundingDINO {model_name} ({len(missing)} weights missing, "
                            f"e.g. {missing[0]}): check --gdino-checkpoint")
    return model.to(device).eval(), ckpt_path, text_encoder


def token_phrase_index(offsets: list[tuple[int, int]], phrases: list[str]) -> np.ndarray:
    """For each caption token, the index of the phrase it belongs to, or -1 (special tokens, separators)."""
    spans = phrase_spans(phrases)
    index = np.full(len(offsets), -1, dtype=np.int64)
    for t, (start, end) in enumerate(offsets):
        if end <= start:
            continue  # [CLS], [SEP], padding
        for p, (p_start, p_end) in enumerate(spans):
            if p_start <= start < p_end:
                index[t] = p
                break
    return index


def label_from_token_scores(token_scores: np.ndarray, token_phrase: np.ndarray, token_ids: list[int],
                            phrases: list[str], text_threshold: float,
                            decode: Callable[[list[int]], str]) -> str:
    """The phrase a box matched: the prompt phrase holding its best-scoring token, narrowed to that phrase's
    tokens above `text_threshold` (so "paper bag" may come back as "bag"), never mixing two phrases."""
    scores = np.where(token_phrase[: len(token_scores)] >= 0, token_scores[: len(token_phrase)], -np.inf)
    if not np.isfinite(scores).any():
        return phrases[0]
    best = int(np.argmax(scores))
    phrase = int(token_phrase[best])
    chosen = [token_ids[t] for t in range(len(scores)) if token_phrase[t] == phrase and scores[t] > text_threshold]
    text = decode(chosen).strip() if chosen else ""
    return text or phrases[phrase]


class GroundingDinoSeeder:
    """Text-prompted boxes from GroundingDINO, the way its inference demo computes them."""

    def __init__(self, model_name: str = DEFAULT_GDINO_MODEL, *, checkpoint=None, text_encoder=None, device="cpu",
                 random_weights: bool = False, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                 text_threshold: float = DEFAULT_TEXT_THRESHOLD, max_detections: int = DEFAULT_MAX_DETECTIONS,
                 resize_shortest: int | None = None, resize_max: int | None = None):
        check_thresholds(box_threshold=box_threshold, text_threshold=text_threshold)
        self.device = torch.device(device)
        self.model, self.checkpoint, self.text_encoder = build_gdino_model(
            model_name, checkpoint, text_encoder, self.device, random_weights)
        self.model_name = model_name
        self.name = f"groundingdino_{model_name}"
        self.random_weights = random_weights
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.max_detections = max_detections
        self.resize_shortest = resize_shortest or RESIZE_SHORTEST
        self.resize_max = resize_max or RESIZE_MAX

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "text_encoder": str(self.text_encoder), "random_weights": self.random_weights}

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        import groundingdino.datasets.transforms as T
        from PIL import Image

        transform = T.Compose([T.RandomResize([self.resize_shortest], max_size=self.resize_max), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        tensor, _ = transform(Image.fromarray(image), None)
        return tensor

    @torch.inference_mode()
    def detect(self, image: np.ndarray, prompt: str) -> Detections:
        phrases = parse_prompt(prompt)
        caption = caption_from_phrases(phrases)
        height, width = image.shape[:2]
        pixels = self.preprocess(image).to(self.device)
        with autocast(self.device):
            outputs = self.model(pixels[None], captions=[caption])
        token_logits = outputs["pred_logits"][0].float().sigmoid().cpu().numpy()  # (queries, 256)
        boxes = outputs["pred_boxes"][0].float().cpu().numpy()  # (queries, 4) normalised cxcywh
        box_scores = token_logits.max(axis=1)
        keep = np.nonzero(box_scores > self.box_threshold)[0]
        keep = keep[np.argsort(-box_scores[keep], kind="stable")][: self.max_detections]
        if len(keep) == 0:
            return Detections.empty()
        tokenizer = self.model.tokenizer
        tokenized = tokenizer(caption, return_offsets_mapping=True)
        token_phrase = token_phrase_index(tokenized["offset_mapping"], phrases)
        labels = [label_from_token_scores(token_logits[q], token_phrase, tokenized["input_ids"], phrases,
                                          self.text_threshold, tokenizer.decode) for q in keep]
        return Detections(cxcywh_normalized_to_xyxy_pixels(boxes[keep], width, height), box_scores[keep], labels)
