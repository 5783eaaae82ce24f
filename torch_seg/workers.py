"""Several workers over one list of images or videos: each takes a fixed, disjoint share and its own GPU.

The workers never talk to each other (no process group): each one reads the whole sorted list, keeps the
items i with i % N == K, and writes into the shared output folder, where every item has a folder of its own.
Round-robin rather than contiguous blocks: the shares differ in size by at most one item, and neighbours in a
sorted list are often alike (a camera's burst, a folder of large scans), so interleaving spreads the costly
stretches over all workers instead of handing one worker all of them. The split depends only on N, K and the
list, never on timing, so a rerun after a crash gives every worker the same share again.

N and K come from --num-workers/--worker-index, else from torchrun (WORLD_SIZE, RANK, LOCAL_RANK), else from
SLURM (SLURM_STEP_NUM_TASKS or SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID); flags win. torchrun is asked before
SLURM because torchrun started inside an srun step is the inner launcher: its numbers count every process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from torch_seg.errors import UserError

T = TypeVar("T")

LAUNCH_FIX = "launch with torchrun or srun, or pass --num-workers N --worker-index K"


@dataclass(frozen=True)
class WorkerShare:
    """Worker `worker_index` of `num_workers`; `local_rank` picks its GPU on a host of several (None: not known)."""

    num_workers: int = 1
    worker_index: int = 0
    local_rank: int | None = None
    source: str = "flags"  # where the numbers came from, for the line a worker prints at start

    def __post_init__(self):
        if self.num_workers < 1:
            raise UserError(f"the number of workers ({self.source}) must be at least 1, got {self.num_workers}")
        if not 0 <= self.worker_index < self.num_workers:
            raise UserError(f"worker index {self.worker_index} ({self.source}) is out of range for "
                            f"{self.num_workers} worker(s): use 0..{self.num_workers - 1}")
        if self.local_rank is not None and self.local_rank < 0:
            raise UserError(f"local rank {self.local_rank} ({self.source}) is negative: {LAUNCH_FIX}")

    def take(self, items: Sequence[T]) -> list[T]:
        """This worker's share of `items`: every item i with i % num_workers == worker_index, in order."""
        return list(items[self.worker_index::self.num_workers])

    def describe(self) -> str:
        return f"worker {self.worker_index} of {self.num_workers} ({self.source})"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number: {LAUNCH_FIX}") from None


def _from_env(environ: Mapping[str, str], size_names: tuple[str, ...], rank_name: str, local_name: str,
              launcher: str) -> WorkerShare | None:
    sizes = {name: _env_int(environ, name) for name in size_names}
    size_name = next((name for name, value in sizes.items() if value is not None), None)
    rank, local_rank = _env_int(environ, rank_name), _env_int(environ, local_name)
    if size_name is None and rank is None:
        return None
    if size_name is None or rank is None:
        have, lack = (size_name, rank_name) if rank is None else (rank_name, " or ".join(size_names))
        raise UserError(f"{have} is set but {lack} is not, so this worker's share is unknown: {LAUNCH_FIX}")
    return WorkerShare(sizes[size_name], rank, local_rank, f"{launcher}'s {size_name}/{rank_name}")


def worker_share(num_workers: int | None = None, worker_index: int | None = None,
                 environ: Mapping[str, str] | None = None) -> WorkerShare:
    """This process's share: from the flags when given (both or neither), else torchrun's or SLURM's
    environment, else the whole list (one worker). The local rank always comes from the launcher, if any."""
    environ = os.environ if environ is None else environ
    if num_workers is not None or worker_index is not None:
        if num_workers is None or worker_index is None:
            given, missing = ("--num-workers", "--worker-index") if worker_index is None else \
                ("--worker-index", "--num-workers")
            raise UserError(f"{given} needs {missing} too: pass both, or neither to take them from torchrun or SLURM")
        local_rank = next((rank for rank in (_env_int(environ, "LOCAL_RANK"), _env_int(environ, "SLURM_LOCALID"))
                           if rank is not None), None)
        return WorkerShare(num_workers, worker_index, local_rank, "--num-workers/--worker-index")
    return (_from_env(environ, ("WORLD_SIZE",), "RANK", "LOCAL_RANK", "torchrun")
            or _from_env(environ, ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "SLURM_PROCID", "SLURM_LOCALID", "SLURM")
            or WorkerShare(1, 0, None, "one worker"))


def worker_device(name: str, local_rank: int | None):
    """The torch device for `--device name` in a worker: on CUDA, the GPU of its local rank.

    Where the launcher gave each worker a single visible GPU (CUDA_VISIBLE_DEVICES per task, as
    `srun --gpus-per-task=1` does), that GPU is cuda:0 whatever the local rank. It is also made the current
    device, so that library code which allocates on plain "cuda" lands on the same GPU.
    """
    import torch

    from torch_seg.device import resolve_device

    device = resolve_device(name)
    if device.type != "cuda" or local_rank is None:
        return device
    count = torch.cuda.device_count()
    if local_rank < count:
        index = local_rank
    elif count == 1:
        index = 0
    else:
        raise UserError(f"local rank {local_rank} but this host has only {count} visible GPUs: start at most "
                        f"{count} workers per host (torchrun --nproc-per-node {count})")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
