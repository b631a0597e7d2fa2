"""Tests of MNIST loading: tiny fake datasets, the bundled sample and the real data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from privfl.data.mnist import (
    FILE_NAMES,
    MNIST_MEAN,
    MNIST_STD,
    images_to_float,
    load_bundled_mnist,
    load_mnist,
)
from privfl.errors import DataError

REAL_MNIST = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"
SAMPLE_README = Path(__file__).parents[1] / "src" / "privfl" / "data" / "mnist_sample" / "README.md"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (type code 0x08)."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    return header + array.tobytes()


def fake_arrays(n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (9 - np.arange(n_test, dtype=np.uint8)) % 10,
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], *, compress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for role, name in FILE_NAMES.items():
        raw = idx_bytes(arrays[role])
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def assert_matches(data, arrays: dict[str, np.ndarray]) -> None:
    for role, array in arrays.items():
        tensor = getattr(data, role)
        expected_dtype = torch.uint8 if role.endswith("images") else torch.int64
        assert tensor.dtype == expected_dtype
        assert torch.equal(tensor, torch.from_numpy(array.astype(tensor.numpy().dtype)))


@pytest.mark.parametrize("compress", [True, False])
def test_load_flat_directory(tmp_path: Path, compress: bool) -> None:
    arrays = fake_arrays()
    write_mnist(tmp_path, arrays, compress=compress)
    data = load_mnist(tmp_path)
    assert_matches(data, arrays)
    assert data.source == str(tmp_path)
    assert "train=6" in repr(data)


def test_load_torchvision_layout(tmp_path: Path) -> None:
    arrays = fake_arrays()
    write_mnist(tmp_path / "MNIST" / "raw", arrays, compress=True)
    assert_matches(load_mnist(tmp_path), arrays)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_mnist(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)
    assert "--data-dir" in str(info.value)


def test_missing_files_are_listed(tmp_path: Path) -> None:
    write_mnist(tmp_path, fake_arrays(), compress=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte" in message
    assert "train-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert "--data-dir" in message


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = fake_arrays()
    arrays["test_labels"][1] = 10
    write_mnist(tmp_path, arrays, compress=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: holds label 10"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    arrays = fake_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_mnist(tmp_path, arrays, compress=False)
    with pytest.raises(DataError, match=r"6 images but .*train-labels-idx1-ubyte holds 5"):
        load_mnist(tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    arrays = fake_arrays()
    arrays["train_images"] = arrays["train_images"][:, :27, :]
    write_mnist(tmp_path, arrays, compress=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: expected images of 28x28"):
        load_mnist(tmp_path)


def class_counts(labels: torch.Tensor) -> str:
    counts = torch.bincount(labels, minlength=10).tolist()
    return " ".join(f"{digit}:{count}" for digit, count in enumerate(counts))


def test_bundled_sample_matches_readme() -> None:
    data = load_bundled_mnist()
    assert data.train_images.shape == (10_000, 28, 28)
    assert data.train_labels.shape == (10_000,)
    assert data.test_images.shape == (2_000, 28, 28)
    assert data.test_labels.shape == (2_000,)
    assert set(data.train_labels.tolist()) == set(range(10))
    assert set(data.test_labels.tolist()) == set(range(10))
    readme = SAMPLE_README.read_text(encoding="utf-8")
    assert f"training sample: {class_counts(data.train_labels)}" in readme
    assert f"test sample: {class_counts(data.test_labels)}" in readme


def test_images_to_float() -> None:
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = images_to_float(images)
    assert out.shape == (1, 1, 2, 2)
    assert out.dtype == torch.float32
    expected = (images.double() / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(out[:, 0].double(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        images_to_float(images.float())


def test_images_to_float_standardises_real_pixels() -> None:
    out = images_to_float(load_bundled_mnist().train_images)
    assert abs(out.mean().item()) < 0.05
    assert abs(out.std().item() - 1) < 0.05


def test_real_mnist() -> None:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"real MNIST not found at {REAL_MNIST}")
    data = load_mnist(REAL_MNIST)
    assert data.train_images.shape == (22_699, 28, 28)
    assert data.test_images.shape == (10_000, 28, 28)
    assert len(data.train_labels) == 22_699
    assert len(data.test_labels) == 10_000
    expected = "0:2258 1:2581 2:2215 3:2369 4:2222 5:2010 6:2235 7:2356 8:2163 9:2290"
    assert class_counts(data.train_labels) == expected
    sample = load_bundled_mnist()
    assert torch.equal(sample.train_images, data.train_images[:10_000])
    assert torch.equal(sample.test_labels, data.test_labels[:2_000])
