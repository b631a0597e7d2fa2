"""Tests of the IDX reader on small files written here, plain and gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from privfl.data.idx import read_idx
from privfl.errors import DataError

CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX: zero bytes, type code, ndim, big-endian dims and data."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, CODES[array.dtype], array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path: Path, dtype: np.dtype, compress: bool) -> None:
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    raw = idx_bytes(array)
    name = "a.idx.gz" if compress else "a.idx"
    out = read_idx(write(tmp_path / name, gzip.compress(raw) if compress else raw))
    assert out.dtype == dtype.newbyteorder("=")
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_gzip_is_detected_by_magic_not_suffix(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    zipped = read_idx(write(tmp_path / "no-suffix", gzip.compress(idx_bytes(array))))
    plain = read_idx(write(tmp_path / "plain.gz", idx_bytes(array)))
    np.testing.assert_array_equal(zipped, array)
    np.testing.assert_array_equal(plain, array)


def test_one_dimensional_labels(tmp_path: Path) -> None:
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l", idx_bytes(labels))), labels)


def test_reads_str_path(tmp_path: Path) -> None:
    path = write(tmp_path / "s", idx_bytes(np.zeros((1, 2), np.int32)))
    assert read_idx(str(path)).shape == (1, 2)


def good() -> bytes:
    return idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x01\x00" + good()[2:], "not an IDX file"),
        (good()[:2] + b"\x07" + good()[3:], "unknown IDX element type code 0x07"),
        (good()[:-5], "expects 12 bytes of data, found 7"),
        (good() + b"xyz", "expects 12 bytes of data, found 15"),
        (good()[:9], "truncated"),
        (b"\x00\x00", "too short"),
        (b"", "too short"),
    ],
    ids=["magic", "dtype", "truncated", "trailing", "header", "short", "empty"],
)
@pytest.mark.parametrize("compress", [False, True])
def test_malformed_raises_data_error_naming_file(
    tmp_path: Path, raw: bytes, problem: str, compress: bool
) -> None:
    path = write(tmp_path / "broken-file.idx", gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_raises_data_error(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.gz", gzip.compress(good())[:-10])
    with pytest.raises(DataError, match="cannot be decompressed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere-idx3-ubyte"
    with pytest.raises(DataError, match="no such file") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_directory_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot be read") as info:
        read_idx(tmp_path)
    assert str(tmp_path) in str(info.value)
