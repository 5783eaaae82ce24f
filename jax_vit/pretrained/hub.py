"""Where a named checkpoint is: a local path, or a Hugging Face Hub repo in the local cache (or fetched).

`--pretrained` takes a file or folder that exists, or a Hub repo id (`timm/vit_base_patch16_224.augreg_in21k`,
`google/vit-base-patch16-224-in21k`, optionally `hf-hub:`-prefixed as timm writes them). A repo is looked up
in huggingface_hub's cache only (as with HF_HUB_OFFLINE=1: no network, an answer in well under a second)
unless `download` is set; then only its config and safetensors weights are fetched, into that cache.
"""
from __future__ import annotations

import re
from pathlib import Path

from jax_vit.pretrained.base import PretrainedError, require

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a ViT repo needs, in timm's and transformers' file names (never pytorch_model.bin: torch pickles).
_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json",
          "model-*-of-*.safetensors"]
_CHECKPOINT_SUFFIXES = (".npz", ".safetensors", ".json", ".bin", ".pth", ".pt", ".msgpack", ".h5")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.lower().endswith(_CHECKPOINT_SUFFIXES)


def resolve(source: str, *, download: bool = False) -> Path:
    """The local file or folder `source` names (a Hub repo: its snapshot folder in the cache)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    name = source[len("hf-hub:"):] if source.startswith("hf-hub:") else source
    if not is_repo_id(name):
        raise PretrainedError(f"checkpoint {source} does not exist; give an existing file or folder, or a Hugging "
                              f"Face Hub repo id such as timm/vit_base_patch16_224.augreg_in21k (the ViT authors' "
                              f".npz files are under https://storage.googleapis.com/vit_models/)")
    require("huggingface_hub")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(name, allow_patterns=_FILES, local_files_only=not download)
    except LocalEntryNotFoundError:
        if download:
            raise PretrainedError(f"could not download {name} from the Hugging Face Hub (no network, or "
                                  f"HF_HUB_OFFLINE is set); download it where there is network, or pass a local "
                                  f"copy to --pretrained") from None
        raise PretrainedError(f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); add --download "
                              f"to fetch it (config.json + model.safetensors), or pass a local file or folder "
                              f"to --pretrained") from None
    except HfHubHTTPError as error:  # an unknown or gated repo, a server error
        raise PretrainedError(f"the Hugging Face Hub refused {name} ({str(error).splitlines()[0]}); check the repo "
                              f"id (and `huggingface-cli login` for a gated one)") from None
    return Path(folder)
