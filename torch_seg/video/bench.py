"""Propagation speed of SAM 2's video predictor, measured the way the SAM 2 paper reports it (frames/s).

Random weights give the real compute: the architecture, input size and number of objects fix the work, not
the weight values. The clip's frames are first converted as `scripts/track.py` does; one box per object is
added on frame 0; then every frame is propagated and timed (CUDA synchronised). On CUDA, warm-up passes
(kernel selection, torch.compile) run first and are not counted.
"""
from __future__ import annotations

from torch_seg import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from torch_seg.device import autocast, autocast_choice, synchronize
from torch_seg.errors import UserError
from torch_seg.video.frames import open_video
from torch_seg.video.predictor import build_video_predictor


def _sync(device: torch.device) -> None:
    synchronize(device)


def machine_record(device: torch.device) -> dict:
    """What the figures were measured on, including the load other users put on a shared machine."""
    from importlib.metadata import version

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    record = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "python": platform.python_version(), "torch": torch.__version__,
              "sam2": version("sam2"), "device": str(device),
              "load_average": os.getloadavg(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def measure_propagation(video: str | Path, model_name: str = "tiny", *, num_frames: int = 8, num_objects: int = 1,
                        device: torch.device | str = "cpu", vos_optimized: bool = False,
                        warmup_passes: int = 0) -> dict:
    """Frames/s of `propagate_in_video` over the first `num_frames` frames, `num_objects` boxes on frame 0."""
    if num_frames < 2 or num_objects < 1 or warmup_passes < 0:
        raise UserError(f"--num-frames {num_frames} / --objects {num_objects} / --warmup-passes {warmup_passes}: "
                        f"need at least 2 frames (frame 0 holds the prompts), 1 object and 0 warm-up passes")
    device = torch.device(device)
    if device.type == "cuda":
        # As sam2's own benchmark.py: TF32 for what bf16 autocast leaves in float32 (Ampere and newer).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="torch_seg_bench_") as jpeg_dir:
        frames = open_video(video, jpeg_dir, num_frames)
        if len(frames) < 2:
            raise UserError(f"{video} has {len(frames)} frame: the benchmark needs at least 2")
        started = time.perf_counter()
        predictor = build_video_predictor(model_name, None, device, random_weights=True, vos_optimized=vos_optimized)
        build_s = time.perf_counter() - started
        # Boxes spread over the frame's width, so several objects are distinct prompts.
        w, h = frames.width, frames.height
        boxes = [[w * (i + 0.1) / num_objects, h * 0.1, w * (i + 0.9) / num_objects, h * 0.9]
                 for i in range(num_objects)]
        with torch.inference_mode(), autocast(device):
            started = time.perf_counter()
            state = predictor.init_state(jpeg_dir)
            _sync(device)
            init_s = time.perf_counter() - started
            per_frame_s = []
            cpu_s = 0.0
            warmup_started = time.perf_counter()
            for run in range(warmup_passes + 1):
                if run == warmup_passes:  # the warm-up passes (kernel choice, torch.compile) end here
                    warmup_s = time.perf_counter() - warmup_started
                predictor.reset_state(state)
                for obj_id, box in enumerate(boxes, start=1):
                    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, box=box)
                per_frame_s = []
                begin = time.perf_counter()
                for frame_index, _, _ in predictor.propagate_in_video(state):
                    _sync(device)
                    now = time.perf_counter()
                    per_frame_s.append(now - begin)
                    if frame_index == 0:
                        cpu_begin = time.process_time()
                    begin = now
                cpu_s = time.process_time() - cpu_begin
    # Frame 0 holds the prompts (already decoded when the boxes were added), so it is not a tracking step.
    tracked = per_frame_s[1:]
    autocast_dtype = autocast_choice(device).name
    return {"model": f"sam2.1_hiera_{model_name}", "frames": len(frames), "frame_size": [frames.width, frames.height],
            "objects": num_objects, "dtype": f"{autocast_dtype} autocast" if autocast_dtype else "float32",
            "vos_optimized": vos_optimized, "warmup_passes": warmup_passes, "build_s": round(build_s, 3),
            "init_state_s": round(init_s, 3), "warmup_s": round(warmup_s, 3), "tracked_frames": len(tracked),
            "frames_per_s": round(len(tracked) / sum(tracked), 4),
            "median_frame_ms": round(1e3 * statistics.median(tracked), 2),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            # CPU seconds of this process per tracked frame (all threads): unlike wall time, other users' load on a
            # shared machine barely changes it; threads / cpu_s_per_frame estimates frames/s on an idle machine.
            "cpu_s_per_frame": round(cpu_s / len(tracked), 3),
            "per_frame_ms": [round(1e3 * s, 2) for s in per_frame_s]}
