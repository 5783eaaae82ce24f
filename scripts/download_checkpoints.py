"""Fetch the SAM 2.1 and GroundingDINO checkpoints (and the bert-base-uncased tokenizer files) for online users.

  python scripts/download_checkpoints.py                      # SAM 2.1 tiny + GroundingDINO Swin-T + BERT files
  python scripts/download_checkpoints.py --sam2-model all --gdino-model all

Files go to checkpoints/ (or $TORCH_SEG_CHECKPOINTS), where scripts/segment.py looks by default. Each download
is written to a temporary file and renamed only when complete and, where a checksum is pinned in
torch_seg/checkpoints.py, when its SHA-256 matches; otherwise its SHA-256 is printed for you to record.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from torch_seg.checkpoints import (BERT_MODEL_ID, CHECKPOINT_DIR, DEFAULT_GDINO_MODEL, DEFAULT_SAM2_MODEL,
                                   DEFAULT_TEXT_ENCODER_DIR, GDINO_MODELS, SAM2_MODELS, CheckpointSpec, sha256_of)
from torch_seg.errors import UserError

BERT_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json")
TIMEOUT_S = 30


def download(spec: CheckpointSpec, folder: Path) -> Path:
    from tqdm import tqdm

    final = folder / spec.filename
    if final.is_file() and (spec.sha256 is None or sha256_of(final) == spec.sha256):
        print(f"have {final}")
        return final
    part = final.with_name(final.name + ".part")
    try:
        with urllib.request.urlopen(spec.url, timeout=TIMEOUT_S) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {spec.url} ({e}): are you online? "
                        f"Otherwise copy the file to {final}") from None
    digest = sha256_of(part)
    if spec.sha256 is not None and digest != spec.sha256:
        part.unlink()
        raise UserError(f"{spec.filename}: SHA-256 {digest} does not match the pinned {spec.sha256}: "
                        f"retry the download")
    part.replace(final)
    print(f"got {final} (sha256 {digest}{', verified' if spec.sha256 else ', no pinned checksum to compare'})")
    return final


def download_bert_files(folder: Path) -> None:
    """GroundingDINO's text encoder needs only bert-base-uncased's tokenizer files and config.json."""
    from torch_seg.results import atomic_dir

    try:
        from huggingface_hub import hf_hub_download
        # All four files or no folder: a half-filled folder would be taken for the text encoder on every run.
        with atomic_dir(folder) as partial:
            for name in BERT_FILES:
                shutil.copy(hf_hub_download(BERT_MODEL_ID, name), partial / name)
    except Exception as e:  # the hub client raises many types for "offline"
        raise UserError(f"cannot fetch {BERT_MODEL_ID} tokenizer files ({type(e).__name__}): are you online? "
                        f"Otherwise copy them into {folder}") from None
    print(f"got {BERT_MODEL_ID} tokenizer + config in {folder}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sam2-model", default=DEFAULT_SAM2_MODEL, choices=[*SAM2_MODELS, "all", "none"])
    p.add_argument("--gdino-model", default=DEFAULT_GDINO_MODEL, choices=[*GDINO_MODELS, "all", "none"])
    p.add_argument("--no-bert", action="store_true", help="skip the bert-base-uncased tokenizer files")
    args = p.parse_args(argv)
    pick = lambda choice, table: list(table) if choice == "all" else ([] if choice == "none" else [choice])
    try:
        CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
        for name in pick(args.sam2_model, SAM2_MODELS):
            download(SAM2_MODELS[name][1], CHECKPOINT_DIR)
        for name in pick(args.gdino_model, GDINO_MODELS):
            download(GDINO_MODELS[name][1], CHECKPOINT_DIR)
        if not args.no_bert:
            download_bert_files(DEFAULT_TEXT_ENCODER_DIR)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
