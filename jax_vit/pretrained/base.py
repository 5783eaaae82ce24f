"""What every checkpoint format turns into: a `Pretrained` (our parameter layout, the architecture it fixes).

Each reader (`timm.py`, `transformers.py`, `npz.py`, `run.py`) maps its framework's tensors onto the pure
dict of `jax_vit.model.VisionTransformer`'s parameters, head left out (fine-tuning replaces it), and takes
every tensor it meets: whatever is left over belongs to a variant this model does not compute, and the
checkpoint is refused naming it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED = ("supported: class-token ViTs (CLS-token classifier, learned position embeddings, pre-norm blocks) as "
             "timm or Hugging Face transformers safetensors, the ViT authors' .npz files, or a jax_vit workdir")

# Config fields a checkpoint fixes: the fine-tuning config takes them from it, and --set may not change them.
ARCHITECTURE_FIELDS = ("width", "depth", "num_heads", "mlp_dim", "patch_size", "layer_norm_epsilon",
                       "gelu_approximation", "qkv_bias")

# The heads of the published ViT sizes by width (Ti 192, S 384, B 768, L 1024, H 1280: timm's vit_*_patch*
# definitions and the ViT paper), for a bare timm state dict, which does not record them.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class PretrainedError(ValueError):
    """A checkpoint that is missing, unreadable or of an architecture this model does not compute; the
    message names the fix."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    source: str  # as the user named it (a path or a Hugging Face Hub repo id)
    format: str  # "timm", "transformers", "vit_jax npz" or "jax_vit run"
    path: str  # the local file or folder read
    architecture: dict[str, Any]  # ARCHITECTURE_FIELDS -> values
    resolution: int  # the input size it was trained at (its position-embedding grid x patch size)
    in_channels: int
    input_norm: str | None  # the pixel normalisation it was trained with (a Config.input_norm value)
    params: dict  # our pure-dict layout, numpy float32, without "head"
    notes: tuple[str, ...] = ()  # what was dropped or assumed, and why

    @property
    def grid(self) -> int:
        return self.resolution // self.architecture["patch_size"]

    def record(self) -> dict[str, Any]:
        """What a fine-tuning run records about its starting point (run.json)."""
        return {"source": self.source, "format": self.format, "path": self.path, "resolution": self.resolution,
                "in_channels": self.in_channels, "input_norm": self.input_norm, "notes": list(self.notes)}


class Tensors:
    """A checkpoint's named arrays, taken one by one; `leftover()` names what no reader asked for."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str):
        self.arrays = dict(arrays)
        self.source = source
        self.taken: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def names(self) -> list[str]:
        return list(self.arrays)

    def take(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise PretrainedError(f"{self.source}: tensor {name!r} is missing, so it is not a complete ViT "
                                  f"checkpoint ({SUPPORTED})")
        self.taken.add(name)
        return np.asarray(self.arrays[name], np.float32)

    def drop(self, prefix: str) -> list[str]:
        """Marks every tensor under `prefix` as handled (left out on purpose); returns their names."""
        names = [n for n in self.arrays if n == prefix or n.startswith(prefix)]
        self.taken.update(names)
        return names

    def leftover(self) -> list[str]:
        return sorted(set(self.arrays) - self.taken)

    def check_all_taken(self) -> None:
        rest = self.leftover()
        if rest:
            shown = ", ".join(rest[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
            raise PretrainedError(f"{self.source} holds tensors a plain class-token ViT does not have ({shown}); "
                                  f"{SUPPORTED}")


def require(module: str) -> None:
    """A one-line PretrainedError naming the pip command where a package reading checkpoints is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PretrainedError(f"reading pretrained checkpoints needs {module}: pip install {module}")


def refuse(source: str, what: str) -> PretrainedError:
    return PretrainedError(f"{source}: {what} is not a class-token ViT this model computes; {SUPPORTED}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a NumPy array (float32 where it was bfloat16: NumPy has none)."""
    require("safetensors")
    from safetensors import SafetensorError, safe_open

    try:
        arrays = {}
        with safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
            bf16 = []
            for name in names:
                try:
                    arrays[name] = handle.get_tensor(name)
                except TypeError:  # "data type 'bfloat16' not understood"
                    bf16.append(name)
        if bf16:
            with safe_open(str(path), framework="flax") as handle:
                for name in bf16:
                    arrays[name] = np.asarray(handle.get_tensor(name), np.float32)
        return arrays
    except (SafetensorError, OSError) as error:
        raise PretrainedError(f"{path} is not a readable safetensors file ({error}); download it again "
                              f"(--download) or point --pretrained at a complete copy") from None


def read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PretrainedError(f"{path} is not readable JSON ({error}); download it again or fix the file") from None


def input_norm_of(mean, std, source: str) -> str:
    """The Config.input_norm value whose statistics a checkpoint's preprocessing config names."""
    from jax_vit.augment import PRETRAINED_NORMALIZATION

    for name, (want_mean, want_std) in PRETRAINED_NORMALIZATION.items():
        if np.allclose(mean, want_mean, atol=1e-3) and np.allclose(std, want_std, atol=1e-3):
            return name
    raise PretrainedError(f"{source} was trained on inputs normalised with mean {list(mean)}, std {list(std)}, "
                          f"which jax_vit does not offer; choose the nearest with --set input_norm=inception or "
                          f"--set input_norm=imagenet")


def grid_of(pos_embed: np.ndarray, source: str, prefix_tokens: int = 1) -> int:
    """The side of the square patch grid a (1, prefix + grid^2, width) position embedding covers."""
    count = pos_embed.shape[1] - prefix_tokens
    side = int(round(np.sqrt(max(count, 0))))
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or side * side != count or side == 0:
        raise refuse(source, f"a position embedding of shape {pos_embed.shape} (not one CLS position plus a square "
                             f"grid)")
    return side


def torch_linear(tensors, name: str, bias: bool = True):
    """A PyTorch `nn.Linear` of a state dict as (kernel (in, out), bias or None): torch stores (out, in)."""
    return tensors.take(f"{name}.weight").T, tensors.take(f"{name}.bias") if bias else None


def torch_norm(tensors, name: str):
    """A PyTorch `nn.LayerNorm` of a state dict as (scale, bias)."""
    return tensors.take(f"{name}.weight"), tensors.take(f"{name}.bias")


def block_params(norm1, attention_qkv, attention_proj, norm2, fc1, fc2) -> dict:
    """One encoder block in our layout; each argument a (kernel or scale, bias or None) pair, kernels (in, out)."""
    def dense(pair):
        kernel, bias = pair
        return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}

    def norm(pair):
        return {"scale": pair[0], "bias": pair[1]}

    return {"norm1": norm(norm1), "attention": {"qkv": dense(attention_qkv), "proj": dense(attention_proj)},
            "norm2": norm(norm2), "mlp": {"fc1": dense(fc1), "fc2": dense(fc2)}}
