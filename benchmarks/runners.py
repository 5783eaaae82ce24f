"""One runner per framework, all with the same face, so the benchmark can interleave them fairly.

- `JaxRunner` drives the production step (`jax_vit.train_step.make_train_step`: jit(shard_map(...)), here on
  one device as PyTorch runs on one, on-device augmentation included), and for an epoch the trainer's own
  input path (training set resident on the device, `make_gather` per batch).
- `TorchRunner` drives `benchmarks.torch_train.TorchTrainStep` on the same model, eager or `torch.compile`d,
  and for an epoch a DataLoader with torchvision transforms. Its timing (`TorchTimedRunner`) is shared with
  the fine-tuning benchmark's timm runner (`benchmarks.finetune_speed`).

Both start from the same weights (the JAX state, transferred through NumPy), and both read the losses back
every `SYNC_EVERY` steps during an epoch, all but the newest, as the JAX trainer does (the device queue never
drains).

A runner times itself: `first_step()` (tracing + compilation + one step), `run(steps)` (seconds for
`steps` steps of one fixed in-memory batch, synchronised with the device), `epoch(dataset)`.
"""
from __future__ import annotations

import time

import jax
import numpy as np
import torch

from benchmarks.torch_data import train_loader
from benchmarks.torch_train import Schedule, TorchTrainStep, synchronize
from benchmarks.torch_vit import VisionTransformer as TorchViT
from benchmarks.weight_transfer import load_flax_weights
from jax_vit.augment import normalize
from jax_vit.configs import Config
from jax_vit.data import DATASETS
from jax_vit.train import PROGRESS_EVERY, epoch_order, make_gather
from jax_vit.train_step import create_train_state, make_mesh, make_recipe, make_train_step, replicate_on_mesh, shard_batch

SYNC_EVERY = PROGRESS_EVERY  # steps between loss read-backs in an epoch, as the JAX trainer reads them
SCHEDULE_STEPS_PER_EPOCH = 100  # only shapes the learning-rate schedule, which does not affect speed


def synthetic_batch(config: Config, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed uint8 NHWC batch with integer labels, as the training set stores them."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.image_size, config.image_size, config.in_channels)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, config.num_classes, batch_size).astype(np.int32)


class JaxRunner:
    def __init__(self, config: Config, images: np.ndarray, labels: np.ndarray):
        self.config = config
        self.mesh = make_mesh(jax.local_devices()[:1])  # one device, as the PyTorch runners use one
        if len(images) % self.mesh.devices.size:
            raise ValueError(f"batch size {len(images)} does not split over {self.mesh.devices.size} devices")
        self.batch_size = len(images)
        self.recipe = make_recipe(config, SCHEDULE_STEPS_PER_EPOCH)
        self.state = create_train_state(self.recipe, self.mesh)
        self.train_step = make_train_step(self.recipe, self.mesh)
        self.images, self.labels = shard_batch(self.mesh, images, labels)
        self.compiled = None
        self.compiled_memory_bytes = None
        self.last_metrics = None

    @property
    def attention(self) -> str:
        return self.config.attention

    @property
    def device(self) -> jax.Device:
        return self.mesh.devices.flat[0]

    @property
    def device_name(self) -> str:
        return self.device.device_kind

    def initial_params(self):
        """The starting weights, for the PyTorch runners to copy (same starting point for everyone)."""
        return jax.device_get(self.state.params)

    def first_step(self) -> float:
        """Ahead-of-time lowering and compilation of the production step, then one step: seconds."""
        start = time.perf_counter()
        self.compiled = self.train_step.lower(self.state, self.images, self.labels).compile()
        self.state, self.last_metrics = self.compiled(self.state, self.images, self.labels)
        jax.block_until_ready(self.last_metrics)
        elapsed = time.perf_counter() - start
        analysis = self.compiled.memory_analysis()
        if analysis is not None:
            self.compiled_memory_bytes = int(
                analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                - analysis.alias_size_in_bytes
            )
        return elapsed

    def run(self, steps: int) -> float:
        jax.block_until_ready(self.state)
        start = time.perf_counter()
        for _ in range(steps):
            self.state, self.last_metrics = self.compiled(self.state, self.images, self.labels)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def last_loss(self) -> float:
        """The loss of the newest step on the fixed batch (read after the timing, so it costs none)."""
        return float(jax.device_get(self.last_metrics["loss"]))

    def peak_memory_bytes(self) -> int | None:
        """The device allocator's peak (GPU/TPU); None on CPU, where XLA keeps no such statistics."""
        stats = self.device.memory_stats()
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

    def prepare_epochs(self, train_images: np.ndarray, train_labels: np.ndarray) -> None:
        """The trainer's data path: the whole training set copied to every device once, as uint8."""
        self.train_images = replicate_on_mesh(self.mesh, train_images)
        self.train_labels = replicate_on_mesh(self.mesh, train_labels)
        self.num_train = len(train_images)
        self.gather = make_gather(self.mesh)
        self.epochs_done = 0
        # Compile the gather now, so epoch timings hold no compilation (the step is compiled already).
        index = shard_batch(self.mesh, np.arange(self.batch_size, dtype=np.int32))
        jax.block_until_ready(self.gather(self.train_images, self.train_labels, index))

    def epoch(self) -> tuple[float, int]:
        """One pass over the training set as `jax_vit.train` makes it: (seconds, images trained on)."""
        steps = self.num_train // self.batch_size
        self.epochs_done += 1
        order = epoch_order(self.config.seed, self.epochs_done, self.num_train, steps, self.batch_size)
        jax.block_until_ready(self.state)
        start = time.perf_counter()
        pending = []
        for index in order:
            images, labels = self.gather(self.train_images, self.train_labels, shard_batch(self.mesh, index))
            self.state, metrics = self.compiled(self.state, images, labels)
            pending.append(metrics["loss"])
            if len(pending) == SYNC_EVERY:
                jax.device_get(pending[:-1])
                pending = pending[-1:]
        jax.device_get(pending)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start, steps * self.batch_size


class TorchTimedRunner:
    """The timing every PyTorch runner shares, around its own `step()` on one fixed batch on `self.device`:
    synchronised with the device before and after, the CUDA allocator's peak kept per run."""

    device: torch.device
    loss: torch.Tensor | None = None
    peak_bytes: int | None = None

    def step(self) -> torch.Tensor:
        """One training step on the fixed batch; returns the (detached) loss."""
        raise NotImplementedError

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def first_step(self) -> float:
        """Seconds for the first step: tracing and Inductor compilation for `torch.compile`, none for eager."""
        synchronize(self.device)
        start = time.perf_counter()
        self.loss = self.step()
        synchronize(self.device)
        return time.perf_counter() - start

    def run(self, steps: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.loss = self.step()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        if self.device.type == "cuda":
            # Reset before each of its own runs, so eager and compiled PyTorch each report their own peak.
            self.peak_bytes = max(self.peak_bytes or 0, torch.cuda.max_memory_allocated(self.device))
        return elapsed

    def last_loss(self) -> float:
        return float(self.loss)

    def peak_memory_bytes(self) -> int | None:
        """PyTorch's CUDA allocator peak; None on CPU, where PyTorch keeps no such statistics."""
        return self.peak_bytes


class TorchRunner(TorchTimedRunner):
    def __init__(self, config: Config, images: np.ndarray, labels: np.ndarray, initial_params, *,
                 compile: bool, loader_workers: int):
        self.config = config
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = len(images)
        self.loader_workers = loader_workers
        model = load_flax_weights(TorchViT(config), initial_params).to(self.device)
        self.model = torch.compile(model) if compile else model
        schedule = Schedule.from_config(config, SCHEDULE_STEPS_PER_EPOCH)
        self.train_step = TorchTrainStep(self.model, config, schedule, self.device)
        # The same batch the JAX runner trains on, normalised as the DataLoader would deliver it.
        normalised = np.array(normalize(images, config)).transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(normalised)).to(self.device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.attention = "sdpa"  # F.scaled_dot_product_attention, which picks its kernel itself

    def step(self) -> torch.Tensor:
        return self.train_step(self.images, self.labels)

    def prepare_epochs(self, train_images: np.ndarray, train_labels: np.ndarray) -> None:
        info = DATASETS[self.config.dataset]
        self.loader = train_loader(
            train_images, train_labels, batch_size=self.batch_size, crop_padding=self.config.crop_padding,
            random_flip=self.config.random_flip, mean=info.mean, std=info.std,
            num_workers=self.loader_workers, pin_memory=self.device.type == "cuda", seed=self.config.seed,
        )
        next(iter(self.loader))  # start the persistent workers now, so epoch timings hold no start-up

    def epoch(self) -> tuple[float, int]:
        """One pass through the DataLoader: (seconds, images trained on)."""
        synchronize(self.device)
        start = time.perf_counter()
        pending, seen = [], 0
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            pending.append(self.train_step(images, labels))
            seen += len(labels)
            if len(pending) == SYNC_EVERY:
                torch.stack(pending[:-1]).tolist()
                pending = pending[-1:]
        if pending:
            torch.stack(pending).tolist()
        synchronize(self.device)
        return time.perf_counter() - start, seen
