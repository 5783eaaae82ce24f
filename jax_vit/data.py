"""Datasets as whole uint8 arrays, read from whatever `--data-dir` holds.

CIFAR-10 and Fashion-MNIST are small enough to hold in memory and on the accelerator, so loading returns
plain NumPy arrays (images uint8 NHWC, labels int32); batching and augmentation happen on the device.

Sources, detected from the folder's contents:
- the official CIFAR-10 python batches (`cifar-10-batches-py/` or the batch files themselves),
- the official Fashion-MNIST IDX files (`*-idx3-ubyte[.gz]`, also under `fashion-mnist/`),
- a TFDS data_dir (`cifar10/3.0.2/...`, `fashion_mnist/3.0.1/...`), read with `tfds.data_source`,
  which needs no TensorFlow.
`download=True` fetches the official files (checked against their published MD5) when none is there.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """Data the user pointed at is missing, unreadable or corrupt; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    tfds_name: str
    channels: int
    # Per-channel mean and std of the training images in [0, 1], after padding to 32x32.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        tfds_name="cifar10", channels=3,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    # Measured on the 60000 official training images zero-padded from 28x28 to 32x32.
    "fashion_mnist": DatasetInfo(
        tfds_name="fashion_mnist", channels=1, mean=(0.2190,), std=(0.3318,),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                     "Bag", "Ankle boot"),
    ),
}

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DOWNLOAD_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train_images: np.ndarray  # uint8 (N, 32, 32, C)
    train_labels: np.ndarray  # int32 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str  # which format it was read from, for the run's records

    @property
    def channels(self) -> int:
        return self.train_images.shape[-1]


def load_dataset(name: str, data_dir: str | os.PathLike, *, download: bool = False) -> Dataset:
    """Reads `name` from `data_dir`, downloading the official files first if asked and none are there."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    data_dir = Path(data_dir).expanduser()
    source = find_source(name, data_dir, must_exist=not download)
    if source is None:
        source = _download(name, data_dir)
    kind, path = source
    if kind == "cifar_python":
        arrays, class_names = _read_cifar_python(path)
    elif kind == "idx":
        arrays, class_names = _read_fashion_mnist_idx(path), DATASETS[name].class_names
    else:
        arrays, class_names = _read_tfds(name, path), DATASETS[name].class_names
    train_images, train_labels, test_images, test_labels = arrays
    return Dataset(
        name=name,
        train_images=_pad_to_32(train_images), train_labels=train_labels.astype(np.int32),
        test_images=_pad_to_32(test_images), test_labels=test_labels.astype(np.int32),
        class_names=tuple(class_names), source=f"{kind}:{path}",
    )


def find_source(name: str, data_dir: Path, *, must_exist: bool = True) -> tuple[str, Path] | None:
    """(format, folder) of the data for `name` in `data_dir`; None (or DataError) when there is none."""
    fetch_hint = f"add --download to fetch the official {name} files into it"
    if not data_dir.exists():
        if not must_exist:
            return None
        raise DataError(f"data folder {data_dir} does not exist; point --data-dir at your {name} data or {fetch_hint}")
    if not data_dir.is_dir() or not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(f"data folder {data_dir} is not a readable folder; fix its permissions or choose another --data-dir")
    if name == "cifar10":
        for folder in (data_dir / "cifar-10-batches-py", data_dir):
            if (folder / "data_batch_1").exists() or (folder / "test_batch").exists():
                return "cifar_python", folder
    else:
        for folder in (data_dir / "fashion-mnist", data_dir):
            if any((folder / f"{stem}-idx3-ubyte{ext}").exists() for stem in ("train-images", "t10k-images")
                   for ext in ("", ".gz")):
                return "idx", folder
    if (data_dir / DATASETS[name].tfds_name).is_dir():
        return "tfds", data_dir
    if not must_exist:
        return None
    expected = ("cifar-10-batches-py/ (official python batches) or a TFDS data_dir with cifar10/" if name == "cifar10"
                else "the Fashion-MNIST IDX files (*-idx3-ubyte.gz) or a TFDS data_dir with fashion_mnist/")
    raise DataError(f"{data_dir} holds no {name} data (expected {expected}); {fetch_hint}")


def _pad_to_32(images: np.ndarray) -> np.ndarray:
    """Fashion-MNIST's 28x28 digits get a 2-pixel black border so both datasets share one model shape."""
    height, width = images.shape[1:3]
    if (height, width) == (32, 32):
        return images
    top, left = (32 - height) // 2, (32 - width) // 2
    return np.pad(images, ((0, 0), (top, 32 - height - top), (left, 32 - width - left), (0, 0)))


# --- official CIFAR-10 python batches --------------------------------------------------------------------

def _read_cifar_python(folder: Path):
    parts = {}
    for filename in CIFAR10_FILES:
        path = folder / filename
        if not path.exists():
            raise DataError(f"{path} is missing; restore the full cifar-10-batches-py folder "
                            f"(or delete it and re-run with --download)")
        parts[filename] = _read_cifar_batch(path)
    train_images = np.concatenate([parts[f][0] for f in CIFAR10_FILES[:5]])
    train_labels = np.concatenate([parts[f][1] for f in CIFAR10_FILES[:5]])
    test_images, test_labels = parts["test_batch"]
    class_names = DATASETS["cifar10"].class_names
    meta = folder / "batches.meta"
    if meta.exists():
        try:
            with open(meta, "rb") as f:
                names = pickle.load(f, encoding="latin1").get("label_names")
            if names and len(names) == 10:
                class_names = tuple(names)
        except Exception:  # the class names are a nicety; the built-in ones are the official ones
            pass
    return (train_images, train_labels, test_images, test_labels), class_names


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = f"delete {path.parent} and re-run with --download, or restore the file from the official archive"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; fix its permissions") from None
    except Exception as error:  # pickle raises many types on truncated or foreign files
        raise DataError(f"{path} is truncated or corrupt ({type(error).__name__}); {fix}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or len(data) == 0:
        raise DataError(f"{path} does not hold CIFAR-10 images (data {data.shape}, {len(labels)} labels); {fix}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} has labels outside 0..9; {fix}")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue): to NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


# --- official Fashion-MNIST IDX files --------------------------------------------------------------------

def _read_fashion_mnist_idx(folder: Path):
    arrays = []
    for split in ("train", "t10k"):
        images = _read_idx(_idx_path(folder, f"{split}-images-idx3-ubyte"), magic=2051)
        labels = _read_idx(_idx_path(folder, f"{split}-labels-idx1-ubyte"), magic=2049)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels; "
                            f"re-download the IDX files (--download into an empty folder)")
        arrays += [images[..., None], labels]
    return tuple(arrays)


def _idx_path(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder / stem}.gz is missing; restore all four Fashion-MNIST IDX files "
                    f"(apt-get install dataset-fashion-mnist, or --download into an empty folder)")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    fix = "restore it (apt-get install --reinstall dataset-fashion-mnist, or --download into an empty folder)"
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; fix its permissions") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is truncated or corrupt ({type(error).__name__}); {fix}") from None
    header = np.frombuffer(raw[:4], dtype=">u4") if len(raw) >= 4 else np.zeros(1, ">u4")
    ndim = magic - 2048
    if int(header[0]) != magic or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is not an IDX file of the expected kind; {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4"))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(shape))} bytes); {fix}")
    return body.reshape(shape)


# --- TFDS data_dir ---------------------------------------------------------------------------------------

def _read_tfds(name: str, data_dir: Path):
    # tfds.data_source reads array_record files without TensorFlow; download=False keeps an offline run
    # from retrying the dataset host for minutes.
    import tensorflow_datasets as tfds

    arrays = []
    for split in ("train", "test"):
        try:
            source = tfds.data_source(DATASETS[name].tfds_name, split=split, data_dir=str(data_dir), download=False)
            records = [source[i] for i in range(len(source))]
        except Exception as error:
            raise DataError(f"cannot read the TFDS {name} {split} split from {data_dir} "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); prepare it in "
                            f"array_record format or use the official files with --download") from None
        arrays.append(np.stack([np.asarray(r["image"], np.uint8) for r in records]))
        arrays.append(np.asarray([int(r["label"]) for r in records], np.int32))
    return tuple(arrays)


# --- downloads (only when the user asks) -----------------------------------------------------------------

def _download(name: str, data_dir: Path) -> tuple[str, Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        archive = _fetch(CIFAR10_URL, data_dir / "cifar-10-python.tar.gz", CIFAR10_MD5)
        with tempfile.TemporaryDirectory(dir=data_dir) as scratch:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            os.replace(Path(scratch) / "cifar-10-batches-py", data_dir / "cifar-10-batches-py")
        archive.unlink()
        return "cifar_python", data_dir / "cifar-10-batches-py"
    folder = data_dir / "fashion-mnist"
    folder.mkdir(exist_ok=True)
    for filename, md5 in FASHION_MNIST_MD5.items():
        if not (folder / filename).exists():
            _fetch(FASHION_MNIST_URL + filename, folder / filename, md5)
    return "idx", folder


def _fetch(url: str, target: Path, md5: str) -> Path:
    """Downloads into a temporary sibling, checks the MD5, then renames: never a half-written file."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url} ({error}); check the network, or copy the official files "
                        f"into {target.parent} yourself") from None
    digest = hashlib.md5(partial.read_bytes()).hexdigest()
    if digest != md5:
        partial.unlink()
        raise DataError(f"{url} downloaded with MD5 {digest}, expected {md5}; retry the download")
    os.replace(partial, target)
    return target
