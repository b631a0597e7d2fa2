"""Reader for IDX files, the binary format MNIST is distributed in.

An IDX file is two zero bytes, a byte giving the element type, a byte giving the
number of dimensions, one big-endian ``uint32`` per dimension, and then the elements
in big-endian order, row-major. Files are often gzipped; :func:`read_idx` recognises
gzip by its magic bytes, so a gzipped file without the ``.gz`` suffix (or a plain
file with it) is still read correctly.

Every malformed input raises :class:`~privfl.errors.DataError` with a message that
names the file, says what is wrong and how to fix it, because a bad download is the
usual cause and the user should not have to read a numpy traceback to find that out.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from privfl.errors import DataError

__all__ = ["IDX_DTYPES", "parse_idx", "read_idx"]

#: Element type of each IDX type code, as big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_FIX_HINT = "download the file again or point privfl at an intact copy"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the IDX file at ``path`` (gzipped or not) into a numpy array.

    The array has the shape the header declares and the native-endian version of the
    declared element type; it is writable, so ``torch.from_numpy`` can share it.

    :raises DataError: the file is missing or unreadable, or is not a well-formed IDX file.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(
            f"{os.fspath(path)}: no such file; check the path or the data directory"
        ) from None
    except OSError as e:
        raise DataError(
            f"{os.fspath(path)}: cannot be read ({e.strerror or e}); check that it is a "
            "readable file"
        ) from None
    return parse_idx(raw, source=os.fspath(path))


def parse_idx(raw: bytes, *, source: str) -> np.ndarray:
    """Decode the bytes of an IDX file (gzipped or not); ``source`` names it in errors.

    This is :func:`read_idx` without the file system, for data that does not live in a
    plain file (for example a package resource inside a wheel).

    :raises DataError: the bytes are not a well-formed IDX file.
    """
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(raw, source)
    if len(raw) < 4:
        raise DataError(
            f"{source}: is {len(raw)} bytes long, too short for an IDX header (at least 4); "
            f"the file is truncated or empty: {_FIX_HINT}"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{source}: is not an IDX file: it starts with bytes {raw[:2].hex(' ')}, not 00 00; "
            "check that the path names an MNIST-style IDX file (gzipped or not)"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(
            f"{source}: unknown IDX element type code 0x{code:02X} (known: {known}); "
            f"the file is corrupt or not an IDX file: {_FIX_HINT}"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{source}: header declares {ndim} dimensions ({header_len} header bytes) but the "
            f"file has only {len(raw)} bytes; the file is truncated: {_FIX_HINT}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        problem = "the file is truncated" if found < expected else "it has trailing bytes"
        raise DataError(
            f"{source}: header says shape {shape} of {dtype.name}, which expects {expected} "
            f"bytes of data, found {found}; {problem}: {_FIX_HINT}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _gunzip(raw: bytes, source: str) -> bytes:
    """Decompress gzip bytes, turning every decoding failure into a DataError."""
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{source}: starts like a gzip file but cannot be decompressed ({e}); "
            f"the download is incomplete or corrupt: {_FIX_HINT}"
        ) from None
