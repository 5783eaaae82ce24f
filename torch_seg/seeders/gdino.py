"""GroundingDINO (groundingdino-py) as a region seeder: text prompt -> pixel boxes, scores and phrases."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import contextlib
import io
import pickle
from dataclasses import dataclass
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
from torch_seg.seeders.long_prompts import merge_chunk_detections, split_phrases, tokenizer_counter

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
    scores = _phrase_token_scores(token_scores, token_phrase)
    if not np.isfinite(scores).any():
        return phrases[0]
    phrase = best_phrase(token_scores, token_phrase)
    chosen = [token_ids[t] for t in range(len(scores)) if token_phrase[t] == phrase and scores[t] > text_threshold]
    text = decode(chosen).strip() if chosen else ""
    return text or phrases[phrase]


def _phrase_token_scores(token_scores: np.ndarray, token_phrase: np.ndarray) -> np.ndarray:
    """The token scores with special tokens and separators set to -inf."""
    return np.where(token_phrase[: len(token_scores)] >= 0, token_scores[: len(token_phrase)], -np.inf)


def best_phrase(token_scores: np.ndarray, token_phrase: np.ndarray) -> int:
    """The index of the phrase holding a box's best-scoring token (0 when no phrase token has a score)."""
    scores = _phrase_token_scores(token_scores, token_phrase)
    return int(token_phrase[int(np.argmax(scores))]) if np.isfinite(scores).any() else 0


@contextlib.contextmanager
def image_features_reused(model: torch.nn.Module):
    """Within the block, GroundingDINO's backbone runs once and its output is handed to every later forward.

    `GroundingDINO.forward` computes only the Swin backbone's multi-scale features and their position
    encodings from the image alone; the encoder already fuses image and text, so everything after the
    backbone runs once per caption. The block must therefore see a single image.
    """
    backbone, cached = model.backbone, []

    def forward(samples):
        if not cached:
            cached.append(type(backbone).forward(backbone, samples))
        features, positions = cached[0]
        return list(features), list(positions)  # forward appends extra levels to these lists

    backbone.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
    try:
        yield
    finally:
        del backbone.forward


@dataclass
class _CaptionOutput:
    """GroundingDINO's per-query output for one caption (one chunk of the prompt's phrases)."""

    first_phrase: int  # the index of this caption's first phrase in the whole prompt
    phrases: list[str]
    token_scores: np.ndarray  # (queries, 256) sigmoid
    boxes_cxcywh: np.ndarray  # (queries, 4) normalised
    token_phrase: np.ndarray  # per caption token, the index of its phrase in `phrases` or -1
    token_ids: list[int]


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
    def detect(self, image: np.ndarray, prompt: str, *, box_threshold: float | None = None,
               text_threshold: float | None = None, max_detections: int | None = None) -> Detections:
        """Boxes for `prompt`'s phrases; the threshold and count arguments override the seeder's for this call.

        A prompt whose caption exceeds the text encoder's 256 tokens is split between phrases
        (`long_prompts.split_phrases`); the captions share one run of the image backbone and their boxes are
        merged by per-phrase NMS. A prompt that fits runs exactly as GroundingDINO's demo (no NMS).
        """
        box_threshold = self.box_threshold if box_threshold is None else box_threshold
        text_threshold = self.text_threshold if text_threshold is None else text_threshold
        max_detections = self.max_detections if max_detections is None else max_detections
        check_thresholds(box_threshold=box_threshold, text_threshold=text_threshold)
        phrases = parse_prompt(prompt)
        tokenizer = self.model.tokenizer
        chunks = split_phrases(phrases, tokenizer_counter(tokenizer), self.model.max_text_len)
        height, width = image.shape[:2]
        pixels = self.preprocess(image).to(self.device)
        outputs, first = [], 0
        with image_features_reused(self.model) if len(chunks) > 1 else contextlib.nullcontext():
            for chunk in chunks:
                outputs.append(self._run_caption(pixels, chunk, first))
                first += len(chunk)
        # Candidates: (caption, query) pairs above the box threshold, best first.
        caption_ids, query_ids, scores = [], [], []
        for c, out in enumerate(outputs):
            box_scores = out.token_scores.max(axis=1)
            kept = np.nonzero(box_scores > box_threshold)[0]
            caption_ids.append(np.full(len(kept), c)), query_ids.append(kept), scores.append(box_scores[kept])
        caption_ids, query_ids, scores = map(np.concatenate, (caption_ids, query_ids, scores))
        order = np.argsort(-scores, kind="stable")
        caption_ids, query_ids, scores = caption_ids[order], query_ids[order], scores[order]
        boxes = np.array([outputs[c].boxes_cxcywh[q] for c, q in zip(caption_ids, query_ids)],
                         dtype=np.float32).reshape(-1, 4)
        boxes = cxcywh_normalized_to_xyxy_pixels(boxes, width, height)
        phrase_ids = np.array([outputs[c].first_phrase + best_phrase(outputs[c].token_scores[q],
                                                                       outputs[c].token_phrase)
                               for c, q in zip(caption_ids, query_ids)], dtype=np.int64)
        if len(chunks) > 1:
            keep = merge_chunk_detections(boxes, scores, phrase_ids, max_detections)
        else:
            keep = np.arange(min(len(scores), max_detections))
        if len(keep) == 0:
            return Detections.empty()
        labels = []
        for i in keep:
            out = outputs[caption_ids[i]]
            labels.append(label_from_token_scores(out.token_scores[query_ids[i]], out.token_phrase, out.token_ids,
                                                  out.phrases, text_threshold, tokenizer.decode))
        return Detections(boxes[keep], scores[keep], labels, phrases=[phrases[phrase_ids[i]] for i in keep])

    def _run_caption(self, pixels: torch.Tensor, phrases: list[str], first_phrase: int) -> _CaptionOutput:
        caption = caption_from_phrases(phrases)
        with autocast(self.device):
            outputs = self.model(pixels[None], captions=[caption])
        tokenized = self.model.tokenizer(caption, return_offsets_mapping=True)
        return _CaptionOutput(first_phrase, phrases,
                              token_scores=outputs["pred_logits"][0].float().sigmoid().cpu().numpy(),
                              boxes_cxcywh=outputs["pred_boxes"][0].float().cpu().numpy(),
                              token_phrase=token_phrase_index(tokenized["offset_mapping"], phrases),
                              token_ids=tokenized["input_ids"])
