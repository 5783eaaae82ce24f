"""Prompts longer than GroundingDINO's text limit: split at phrase boundaries, merge the detections.

GroundingDINO's BERT reads at most 256 tokens per caption ([CLS] and [SEP] included) and silently drops the
rest, so the 300th class name of a long prompt would never be looked for. A prompt that does not fit is split
into captions that do (each a run of whole phrases, in order); each caption is matched against the same image
and the boxes are merged: non-maximum suppression per phrase, then the best `max_detections`.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

from typing import Callable

import numpy as np
import torch

from torch_seg.errors import UserError
from torch_seg.prompts import caption_from_phrases

GDINO_MAX_TEXT_TOKENS = 256  # GroundingDINO's max_text_len
# Each caption brings its own 900 queries, several of which often box one object with the same phrase; the
# merged list keeps the best of boxes overlapping at IoU >= 0.5 (torchvision's detection default) per phrase.
CHUNK_MERGE_IOU = 0.5


def split_phrases(phrases: list[str], count_tokens: Callable[[str], int],
                  max_tokens: int = GDINO_MAX_TEXT_TOKENS) -> list[list[str]]:
    """Split `phrases` into runs whose captions (`caption_from_phrases`) are at most `max_tokens` long.

    `count_tokens(caption)` is the text encoder's real count, special tokens included (for GroundingDINO:
    `len(tokenizer(caption).input_ids)`). Runs are filled greedily in prompt order, so a prompt that fits
    stays one caption. A single phrase too long for a caption of its own is a UserError.
    """
    if count_tokens(caption_from_phrases(phrases)) <= max_tokens:
        return [list(phrases)]
    chunks: list[list[str]] = []
    current: list[str] = []
    for phrase in phrases:
        if current and count_tokens(caption_from_phrases([*current, phrase])) <= max_tokens:
            current.append(phrase)
            continue
        alone = count_tokens(caption_from_phrases([phrase]))
        if alone > max_tokens:
            shown = phrase if len(phrase) <= 60 else phrase[:57] + "..."
            raise UserError(f"the prompt phrase {shown!r} is {alone} tokens as a caption, more than the detector's "
                            f"{max_tokens}-token text limit: shorten it (long prompts are split between phrases, "
                            f"never inside one)")
        if current:
            chunks.append(current)
        current = [phrase]
    chunks.append(current)
    return chunks


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """`count_tokens` for a Hugging Face tokenizer: the caption's length as the model's text encoder sees it."""
    return lambda caption: len(tokenizer(caption)["input_ids"])


def merge_chunk_detections(boxes_xyxy: np.ndarray, scores: np.ndarray, phrase_ids: np.ndarray, max_detections: int,
                           iou_threshold: float = CHUNK_MERGE_IOU) -> np.ndarray:
    """Indices of the boxes to keep, best first: per-phrase NMS over every caption's boxes, then the top
    `max_detections`."""
    if len(scores) == 0:
        return np.zeros((0,), dtype=np.int64)
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.as_tensor(boxes_xyxy, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                       torch.as_tensor(phrase_ids, dtype=torch.int64), iou_threshold)
    return keep.numpy()[:max_detections]
