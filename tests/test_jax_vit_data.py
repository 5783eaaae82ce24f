"""The dataset loaders on real data (CIFAR-10 sample, Fashion-MNIST), on TFDS mock data, and on bad input."""
import gzip
import shutil
import time

import numpy as np
import pytest

from jax_vit import data
from jax_vit.data import DataError, find_source, load_dataset


def test_cifar10_python_batches_load_as_uint8_nhwc(cifar10_sample_dir):
    dataset = load_dataset("cifar10", cifar10_sample_dir)
    assert dataset.train_images.shape == (5085, 32, 32, 3) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (1017, 32, 32, 3)
    assert dataset.train_labels.dtype == np.int32
    assert set(np.unique(dataset.train_labels)) == set(range(10))
    assert dataset.class_names[0] == "airplane" and dataset.class_names[9] == "truck"
    # Channel-major rows became real pictures: neighbouring pixels correlate strongly in every channel.
    images = dataset.train_images[:200].astype(np.float32)
    for channel in range(3):
        left, right = images[:, :, :-1, channel].ravel(), images[:, :, 1:, channel].ravel()
        assert np.corrcoef(left, right)[0, 1] > 0.8


def test_parent_folder_of_cifar_batches_is_found_too(cifar10_sample_dir):
    kind, folder = find_source("cifar10", cifar10_sample_dir.parent)
    assert kind == "cifar_python" and folder == cifar10_sample_dir


def test_fashion_mnist_idx_files_load_padded_to_32(fashion_mnist_dir):
    dataset = load_dataset("fashion_mnist", fashion_mnist_dir)
    assert dataset.train_images.shape == (60000, 32, 32, 1)
    assert dataset.test_images.shape == (10000, 32, 32, 1)
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10
    border = np.concatenate([dataset.train_images[:, :2].ravel(), dataset.train_images[:, :, -2:].ravel()])
    assert not border.any()
    assert dataset.train_images[:, 2:30, 2:30].mean() > 50


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (32, 32, 1))])
def test_tfds_data_dir_is_read_with_data_source(tmp_path, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / data.DATASETS[name].tfds_name).mkdir()
    assert find_source(name, tmp_path)[0] == "tfds"
    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset(name, tmp_path)
    assert dataset.train_images.shape == (12,) + shape and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (12,) + shape
    assert dataset.train_labels.min() >= 0 and dataset.train_labels.max() < 10


# --- bad input -------------------------------------------------------------------------------------------

def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--download"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_folder_without_a_known_format_names_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="holds no cifar10 data.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="holds no fashion_mnist data"):
        load_dataset("fashion_mnist", tmp_path)


def _copy_cifar(cifar10_sample_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar10_sample_dir, target)
    return target


def test_truncated_cifar_batch_is_named(cifar10_sample_dir, tmp_path):
    folder = _copy_cifar(cifar10_sample_dir, tmp_path)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupt.*--download"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_batch_is_named(cifar10_sample_dir, tmp_path):
    folder = _copy_cifar(cifar10_sample_dir, tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        load_dataset("cifar10", tmp_path)


def test_truncated_fashion_mnist_file_is_named(fashion_mnist_dir, tmp_path):
    for path in fashion_mnist_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(fashion_mnist_dir / target.name) as f:
        raw = f.read()
    target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated"):
        load_dataset("fashion_mnist", tmp_path)


def test_offline_download_fails_fast_and_leaves_no_partial_file(tmp_path, monkeypatch):
    # Port 9 (discard) on localhost refuses the connection at once, as an offline machine would.
    monkeypatch.setattr(data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    started = time.time()
    with pytest.raises(DataError, match="cannot download .*check the network"):
        load_dataset("cifar10", tmp_path / "fresh", download=True)
    assert time.time() - started < 5
    assert list((tmp_path / "fresh").iterdir()) == []


def test_download_is_skipped_when_the_data_is_already_there(cifar10_sample_dir, monkeypatch):
    monkeypatch.setattr(data, "_fetch", lambda *a: pytest.fail("downloaded although the data was present"))
    assert len(load_dataset("cifar10", cifar10_sample_dir, download=True).test_labels) == 1017


def test_download_verifies_the_checksum(tmp_path, monkeypatch):
    served = tmp_path / "served.tar.gz"
    served.write_bytes(b"not the archive")
    monkeypatch.setattr(data, "CIFAR10_URL", served.as_uri())
    with pytest.raises(DataError, match="MD5"):
        load_dataset("cifar10", tmp_path / "fresh", download=True)
    assert not any((tmp_path / "fresh").iterdir())
