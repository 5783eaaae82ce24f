"""PyTorch's natural input pipeline for CIFAR-style data: a Dataset of PIL images, torchvision transforms
and a DataLoader with worker processes, as `torchvision.datasets.CIFAR10` and the write-ups use it.

The images arrive as the same uint8 (N, H, W, C) arrays the JAX trainer reads, so both sides train on
identical data; only the augmentation machinery differs (CPU workers here, on-device inside jit in JAX).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from benchmarks.torchvision_compat import import_torchvision

# At import, not lazily: spawned DataLoader workers import this module (for the dataset's class) before
# they unpickle its torchvision transforms, so the CPU-torch workaround is in place by then.
transforms = import_torchvision().transforms


class ArrayImageDataset(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) images and int labels, served as PIL images through `transform`, like CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(pil), int(self.labels[index])


def train_transform(image_size: int, crop_padding: int, random_flip: bool, mean, std):
    """RandomCrop(padding) + RandomHorizontalFlip + ToTensor + Normalize: the write-ups' training transform."""
    steps = []
    if crop_padding:
        steps.append(transforms.RandomCrop(image_size, padding=crop_padding))
    if random_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def train_loader(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int, crop_padding: int, random_flip: bool,
    mean, std, num_workers: int, pin_memory: bool, seed: int = 0,
) -> torch.utils.data.DataLoader:
    """Shuffled, incomplete last batch dropped (as the JAX trainer drops it), persistent workers.

    Workers are spawned, not forked: the benchmark's process also runs JAX, whose threads make `fork`
    unsafe (a forked child can deadlock on a lock another thread held). Spawning costs a second or two of
    start-up, once, which the benchmark keeps out of its epoch timings.
    """
    transform = train_transform(images.shape[1], crop_padding, random_flip, mean, std)
    dataset = ArrayImageDataset(images, labels, transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
