"""Text prompts: "truck. wheel." -> phrases, and the GroundingDINO caption built from them."""
from __future__ import annotations

import re

from torch_seg.errors import UserError

_SEPARATORS = re.compile(r"[.;\n]")


def parse_prompt(prompt: str | None) -> list[str]:
    """Split a prompt into lowercase phrases on '.', ';' or newlines; an empty prompt, or a phrase with no
    letter or digit, is a user error.

    "Truck. wheel." -> ["truck", "wheel"]; "paper bag" -> ["paper bag"]; inner whitespace is collapsed.
    """
    if prompt is None or not prompt.strip():
        raise UserError("the prompt is empty: pass --prompt with the objects to find, e.g. --prompt \"truck. wheel.\"")
    phrases = [" ".join(part.split()).lower() for part in _SEPARATORS.split(prompt)]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise UserError(f"the prompt {prompt!r} holds no words: pass e.g. --prompt \"truck. wheel.\"")
    # A phrase of punctuation only ("!!" in "truck. !!") names no object, but the detector would still get it
    # as one and label boxes with it. It is refused rather than dropped: empty fragments ("truck. . wheel")
    # already vanish above, so what is left was typed on purpose or is a mistake (a shell-mangled word, a
    # wrong separator) that the user should see rather than get a silently shorter prompt.
    # str.isalnum, not [a-z0-9]: phrases in other scripts have letters too.
    nameless = [p for p in phrases if not any(ch.isalnum() for ch in p)]
    if nameless:
        raise UserError(f"the prompt phrase {nameless[0]!r} has no letter or digit: a phrase names an object, "
                        f"e.g. --prompt \"truck. paper bag.\" (phrases are separated by '.', ';' or new lines)")
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
