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
        return _with_memory_dtypes_that_mix(predictor)
    path = resolve_sam2_checkpoint(model_name, checkpoint)
    with sam2_checkpoint_errors(path, model_name):
        predictor = build_sam2_video_predictor(config, ckpt_path=str(path), device=device, vos_optimized=vos_optimized)
    return _with_memory_dtypes_that_mix(predictor)


def _with_memory_dtypes_that_mix(predictor):
    return _with_float32_memory_under_float16_autocast(_with_float_memory_outside_autocast(predictor))


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


def _with_float32_memory_under_float16_autocast(predictor):
    """Under float16 autocast (V100, T4: `torch_seg.device`), keep SAM 2's per-frame memory in float32, not bf16.

    The predictor stores each frame's memory features in bf16 and, on the next frame, concatenates them with
    object pointers computed under autocast. With bf16 autocast those are bf16 too; with float16 autocast
    `torch.cat` refuses the mix ("Unexpected floating ScalarType in at::autocast::prioritize", seen on the CPU with
    float16 autocast; autocast's promotion rule is the same on CUDA). float32 holds bf16 values exactly, the cat
    then promotes to float32 and the attention's matmuls run in float16 again; the stored memory takes twice
    the bytes. The two methods wrapped here are the only places sam2 1.1 stores it.
    """
    device_type = torch.device(predictor.device).type

    def widen(features):
        if (features is not None and features.dtype == torch.bfloat16 and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.float16):
            return features.float()
        return features

    run_frame, run_encoder = predictor._run_single_frame_inference, predictor._run_memory_encoder

    def run_single_frame_inference(*args, **kwargs):
        out, pred_masks = run_frame(*args, **kwargs)
        out["maskmem_features"] = widen(out["maskmem_features"])
        return out, pred_masks

    def run_memory_encoder(*args, **kwargs):
        features, pos_enc = run_encoder(*args, **kwargs)
        return widen(features), pos_enc

    predictor._run_single_frame_inference = run_single_frame_inference
    predictor._run_memory_encoder = run_memory_encoder
    return predictor
