"""The one place for model names, official download URLs, checksums and local checkpoint paths.

`scripts/download_checkpoints.py` reads this table to fetch checkpoints; the chain reads it to find them.
A missing checkpoint is a UserError naming the download command, never a silent fallback to random weights.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch_seg.errors import UserError

# Checkpoints live in <repo>/checkpoints (git-ignored) unless TORCH_SEG_CHECKPOINTS points elsewhere.
CHECKPOINT_DIR = Path(os.environ.get("TORCH_SEG_CHECKPOINTS", Path(__file__).resolve().parents[1] / "checkpoints"))
DOWNLOAD_COMMAND = "python scripts/download_checkpoints.py"


@dataclass(frozen=True)
class CheckpointSpec:
    filename: str
    url: str
    sha256: str | None  # None: no checksum published by the authors that we could confirm; printed on download


SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
# SAM 2.1 model name -> (hydra config inside the sam2 package, checkpoint)
SAM2_MODELS: dict[str, tuple[str, CheckpointSpec]] = {
    name: (f"configs/sam2.1/sam2.1_hiera_{short}.yaml",
           CheckpointSpec(f"sam2.1_hiera_{name}.pt", f"{SAM2_BASE_URL}/sam2.1_hiera_{name}.pt", None))
    for name, short in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))
}
DEFAULT_SAM2_MODEL = "tiny"

GDINO_BASE_URL = "https://github.com/IDEA-Research/GroundingDINO/releases/download"
# GroundingDINO model name -> (config module shipped in groundingdino-py, checkpoint)
GDINO_MODELS: dict[str, tuple[str, CheckpointSpec]] = {
    "swin_t": ("GroundingDINO_SwinT_OGC.py",
               CheckpointSpec("groundingdino_swint_ogc.pth",
                              f"{GDINO_BASE_URL}/v0.1.0-alpha/groundingdino_swint_ogc.pth",
                              "3b3ca2563c77c69f651d7bd133e97139c186df06231157a64c507099c52bc799")),
    "swin_b": ("GroundingDINO_SwinB_cfg.py",
               CheckpointSpec("groundingdino_swinb_cogcoor.pth",
                              f"{GDINO_BASE_URL}/v0.1.0-alpha2/groundingdino_swinb_cogcoor.pth", None)),
}
DEFAULT_GDINO_MODEL = "swin_t"

# CLIPSeg lives on the Hugging Face hub only; offline users pass a local copy of this repository's folder.
CLIPSEG_MODEL_ID = "CIDAS/clipseg-rd64-refined"
# GroundingDINO's checkpoint holds the BERT weights; only the tokenizer files and config.json are needed.
BERT_MODEL_ID = "bert-base-uncased"


def sam2_config(model_name: str) -> str:
    if model_name not in SAM2_MODELS:
        raise UserError(f"unknown SAM 2.1 model {model_name!r}: use one of {', '.join(SAM2_MODELS)}")
    return SAM2_MODELS[model_name][0]


def gdino_config_path(model_name: str) -> Path:
    import groundingdino

    if model_name not in GDINO_MODELS:
        raise UserError(f"unknown GroundingDINO model {model_name!r}: use one of {', '.join(GDINO_MODELS)}")
    return Path(groundingdino.__file__).parent / "config" / GDINO_MODELS[model_name][0]


def _resolve(explicit: str | Path | None, spec: CheckpointSpec, what: str, flag: str) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"{what} checkpoint not found: {path} (check {flag}, or run {DOWNLOAD_COMMAND})")
        return path
    path = CHECKPOINT_DIR / spec.filename
    if not path.is_file():
        raise UserError(f"{what} checkpoint {spec.filename} not found in {CHECKPOINT_DIR}: run {DOWNLOAD_COMMAND} "
                        f"(or pass {flag} FILE; --random-weights runs the plumbing without checkpoints)")
    return path


def resolve_sam2_checkpoint(model_name: str, checkpoint: str | Path | None = None) -> Path:
    """The SAM 2.1 checkpoint to load: `checkpoint` if given, else the default local path (UserError if missing)."""
    sam2_config(model_name)
    return _resolve(checkpoint, SAM2_MODELS[model_name][1], f"SAM 2.1 {model_name}", "--sam2-checkpoint")


def resolve_gdino_checkpoint(model_name: str = DEFAULT_GDINO_MODEL, checkpoint: str | Path | None = None) -> Path:
    """The GroundingDINO checkpoint to load: `checkpoint` if given, else the default local path."""
    gdino_config_path(model_name)
    return _resolve(checkpoint, GDINO_MODELS[model_name][1], f"GroundingDINO {model_name}", "--gdino-checkpoint")


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# Where `scripts/download_checkpoints.py` puts the bert-base-uncased tokenizer files and config.json.
DEFAULT_TEXT_ENCODER_DIR = CHECKPOINT_DIR / BERT_MODEL_ID


def resolve_text_encoder(text_encoder: str | Path | None, random_weights: bool = False, **small_bert) -> Path:
    """The local text encoder folder for GroundingDINO: `text_encoder`, else the downloaded default; for a
    random-weight run without one, an offline folder with the bert-base config (or `small_bert` sizes)."""
    from torch_seg.text_encoder import check_text_encoder_dir, random_weights_text_encoder

    if text_encoder is not None:
        return check_text_encoder_dir(text_encoder)
    if DEFAULT_TEXT_ENCODER_DIR.is_dir():
        return check_text_encoder_dir(DEFAULT_TEXT_ENCODER_DIR)
    if random_weights:
        return random_weights_text_encoder(**small_bert)
    raise UserError(f"no bert-base-uncased tokenizer/config in {DEFAULT_TEXT_ENCODER_DIR}: run {DOWNLOAD_COMMAND} "
                    f"or pass --text-encoder DIR (a local bert-base-uncased copy)")
