"""SAM 2.1's video predictor (`build_sam2_video_predictor`), built from the same model table as the image chain."""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import torch

from torch_seg._deps import require
from torch_seg.checkpoints import DEFAULT_SAM2_MODEL, resolve_sam2_checkpoint, sam2_config
from torch_seg.errors import UserError
from torch_seg.sam import RANDOM_WEIGHTS_SEED, sam2_checkpoint_errors


def build_video_predictor(model_name: str = DEFAULT_SAM2_MODEL, checkpoint=None, device="cpu",
                          random_weights: bool = False, vos_optimized: bool = False):
    """A `SAM2VideoPredictor` for `model_name` (tiny|small|base_plus|large) on `device`, in eval mode.

    `vos_optimized` builds sam2's `SAM2VideoPredictorVOS`, which torch.compiles the image encoder, memory
    attention, memory encoder and SAM heads (mode max-autotune): the setting behind the SAM 2 authors' speed
    figures. It is meant for CUDA; compiling takes minutes on first use.
    """
    require("sam2.build_sam")  # sam2 is not in the [seg] extra (see torch_seg/_deps.py)
    from sam2.build_sam import build_sam2_video_predictor

    config = sam2_config(model_name)
    device = str(device)
    if vos_optimized and not device.startswith("cuda"):
        # max-autotune compilation targets GPU kernels; on a CPU it would compile for a very long time for nothing.
        raise UserError("--vos-optimized compiles SAM 2 for CUDA: use it with --device cuda (or drop it)")
    if random_weights:
        # The same seed as the image chain: a random-weight run is reproducible from run to run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            predictor = build_sam2_video_predictor(config, ckpt_path=None, device=device, vos_optimized=vos_optimized)
        return _with_float_memory_outside_autocast(predictor)
    path = resolve_sam2_checkpoint(model_name, checkpoint)
    with sam2_checkpoint_errors(path, model_name):
        predictor = build_sam2_video_predictor(config, ckpt_path=str(path), device=device, vos_optimized=vos_optimized)
    return _with_float_memory_outside_autocast(predictor)


def _with_float_memory_outside_autocast(predictor):
    """Let SAM 2's memory attention run without autocast (CPU): cast its bf16 memory to the weights' dtype.

    The video predictor always stores per-frame memory features in bf16 and relies on CUDA bf16 autocast to
    mix them with its fp32 weights. Without autocast, a frame whose memory holds no fp32 object pointer (the
    first step of a backward pass, for one) fails with "mat1 and mat2 must have the same dtype"
    (facebookresearch/sam2#308). Under autocast this hook changes nothing.
    """
    weight_dtype = next(predictor.memory_attention.parameters()).dtype

    def cast_memory(module, args, kwargs):
        memory = kwargs.get("memory")
        if memory is not None and memory.dtype != weight_dtype and not torch.is_autocast_enabled(memory.device.type):
            kwargs["memory"] = memory.to(weight_dtype)
        return args, kwargs

    predictor.memory_attention.register_forward_pre_hook(cast_memory, with_kwargs=True)
    return predictor
