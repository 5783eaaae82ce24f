"""Text prompts: "truck. wheel." -> phrases, and the GroundingDINO caption built from them."""
from __future__ import annotations

import re

from torch_seg.errors import UserError

_SEPARATORS = re.compile(r"[.;\n]")


def parse_prompt(prompt: str | None) -> list[str]:
    """Split a prompt into lowercase phrases on '.', ';' or newlines; an empty prompt is a user error.

    "Truck. wheel." -> ["truck", "wheel"]; "paper bag" -> ["paper bag"]; inner whitespace is collapsed.
    """
    if prompt is None or not prompt.strip():
        raise UserError("the prompt is empty: pass --prompt with the objects to find, e.g. --prompt \"truck. wheel.\"")
    phrases = [" ".join(part.split()).lower() for part in _SEPARATORS.split(prompt)]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise UserError(f"the prompt {prompt!r} holds no words: pass e.g. --prompt \"truck. wheel.\"")
    # Duplicates add nothing for the detector but would split its attention between identical phrases.
    return list(dict.fromkeys(phrases))


def caption_from_phrases(phrases: list[str]) -> str:
    """GroundingDINO's caption format: phrases separated and ended by ' .' (e.g. "truck . wheel .")."""
    return " . ".join(phrases) + " ."


def phrase_spans(phrases: list[str]) -> list[tuple[int, int]]:
    """Character spans [start, end) of each phrase inside `caption_from_phrases(phrases)`."""
    spans, start = [], 0
    for phrase in phrases:
        spans.append((start, start + len(phrase)))
        start += len(phrase) + len(" . ")
    return spans
