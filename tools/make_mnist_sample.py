"""Write the small MNIST sample that ships inside privfl.

Takes the first N training and the first M test records of an MNIST copy and writes
them as gzipped IDX files under the four official names, so that
``privfl.data.load_bundled_mnist`` can read them without network access. The output
is byte-reproducible: the gzip header carries no timestamp and no file name.

Usage, from the repository root::

    python tools/make_mnist_sample.py            # defaults: 10000 train, 2000 test

Relative paths given on the command line are taken from the current directory; the
defaults are relative to the repository root, whatever the current directory.
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from pathlib import Path

import numpy as np

from privfl.data.idx import IDX_DTYPES, read_idx
from privfl.data.mnist import FILE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as an IDX file, gzipped reproducibly (mtime 0, level 9)."""
    code = _CODES[array.dtype.newbyteorder("=")]
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as f:
        f.write(header + data)
    path.write_bytes(buffer.getvalue())


def class_counts(labels: np.ndarray) -> str:
    """Format per-class counts as ``0:123 1:456 ...``, the form the READMEs use."""
    counts = np.bincount(labels, minlength=10)
    return " ".join(f"{digit}:{count}" for digit, count in enumerate(counts))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, write the sample and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO_ROOT / ".." / "shared/data/mnist",
        help="folder with the four MNIST .gz files (default: ../shared/data/mnist)",
    )
    parser.add_argument("--train", type=int, default=10000, help="training records to keep")
    parser.add_argument("--test", type=int, default=2000, help="test records to keep")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "src/privfl/data/mnist_sample",
        help="output folder (default: src/privfl/data/mnist_sample)",
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    keep = {"train": args.train, "test": args.test}
    for role, name in FILE_NAMES.items():
        array = read_idx(args.source / f"{name}.gz")
        count = keep[role.split("_")[0]]
        if not 0 < count <= len(array):
            parser.error(f"--{role.split('_')[0]} must be in 1..{len(array)}, got {count}")
        out = args.out / f"{name}.gz"
        write_idx(out, array[:count])
        summary = f"classes {class_counts(array[:count])}" if role.endswith("labels") else ""
        print(f"{out}: {count} records, {out.stat().st_size} bytes {summary}".rstrip())


if __name__ == "__main__":
    main()
