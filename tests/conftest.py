"""Shared fixtures. Real data lives beside the checkout in ../shared/data (never copied into the repo)."""
import os
from pathlib import Path

# Two host CPU devices, so the data-parallel paths (shard_map, pmap) run here exactly as on several GPUs.
# Must be set before jax is first imported; single-device tests use jax.devices()[:1].
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_TF", "0")

import pytest

# The test files that exercise only the JAX half (no torch, transformers or sam2 anywhere in them). CI's second
# pass, under the newest versions, leaves them out when its JAX-side libraries are the same as the first
# pass's (.ci/newest_selection.py): they would only repeat the first pass. A file missing here runs in both.
JAX_ONLY_FILES = {
    "test_allocator.py", "test_distributed.py", "test_jax_vit_data.py", "test_jax_vit_model.py",
    "test_jax_vit_train.py", "test_recipe_ablation.py", "test_recipe_augment.py", "test_recipe_mixing.py",
    "test_recipe_randaugment.py",
}



def pytest_xdist_auto_num_workers(config):
    """What `-n auto` (pyproject.toml's addopts) means here: one worker a core, at most 4 and at most one per
    3 GiB of memory. Every test already uses all cores (XLA, PyTorch), so more workers only add contention;
    the gain is in the single-threaded parts (pip, imports, compilation, subprocess start-up), and past 4 the
    longest file (test_jax_vit_train.py) sets the time anyway. A segmentation test with its random-weight
    models peaks near 2 GB."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, int(memory_gib // 3)))

def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in JAX_ONLY_FILES:
            item.add_marker(pytest.mark.jax_only)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def cifar10_sample_dir() -> Path:
    """The real CIFAR-10 sample in the official python format (5085 train / 1017 test images)."""
    return _require(SHARED_DATA / "cifar-10-batches-py", "real CIFAR-10 sample")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The official Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)."""
    return _require(FASHION_MNIST_DIR, "Fashion-MNIST (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def seg_dir() -> Path:
    """Real photos (truck.jpg, groceries.jpg, cars.jpg) and bedroom/ video frames."""
    return _require(SHARED_DATA / "seg", "real segmentation photos")


@pytest.fixture(scope="module")
def small_cifar_dir(cifar10_sample_dir, tmp_path_factory):
    """A small real CIFAR-10 subset in the official python format: 5 x 64 training and 128 test images."""
    import pickle

    from jax_vit.data import load_dataset  # here, not at the top: conftest must not import jax before XLA_FLAGS

    full = load_dataset("cifar10", cifar10_sample_dir)
    folder = tmp_path_factory.mktemp("small") / "cifar-10-batches-py"
    folder.mkdir()

    def write(name, images, labels):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": labels.tolist()}, f)

    for i in range(5):
        write(f"data_batch_{i + 1}", full.train_images[i * 64:(i + 1) * 64], full.train_labels[i * 64:(i + 1) * 64])
    write("test_batch", full.test_images[:128], full.test_labels[:128])
    return folder.parent
