"""MNIST handwritten digits as torch tensors, read from local IDX files.

privfl never downloads data: :func:`load_mnist` reads the four official IDX files from
a directory the user names (plain or gzipped, flat or in torchvision's
``ROOT/MNIST/raw/`` layout), and :func:`load_bundled_mnist` reads the small sample
shipped inside the package, so that examples and tests work offline.

MNIST is by Yann LeCun and Corinna Cortes, derived from NIST data, under the Creative
Commons Attribution-Share Alike 3.0 license; see ``mnist_sample/README.md``.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from privfl.data.idx import parse_idx, read_idx
from privfl.errors import DataError

__all__ = [
    "FILE_NAMES",
    "MNIST",
    "MNIST_MEAN",
    "MNIST_STD",
    "images_to_float",
    "load_bundled_mnist",
    "load_mnist",
]

#: The four official file names, by role, without the optional ``.gz`` suffix.
FILE_NAMES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Mean of MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
#: Standard deviation of MNIST training pixels scaled to [0, 1].
MNIST_STD = 0.3081

_NUM_CLASSES = 10
_SIDE = 28
_DATA_DIR_HINT = "pass --data-dir pointing at a folder holding the four MNIST IDX files"


@dataclasses.dataclass(frozen=True, eq=False)
class MNIST:
    """The MNIST training and test splits.

    Images are ``torch.uint8`` tensors of shape ``[N, 28, 28]``; labels are
    ``torch.int64`` tensors of shape ``[N]`` with values 0..9. ``source`` says where the
    data was read from. Instances compare by identity: comparing tensors element-wise
    has no single truth value.
    """

    train_images: torch.Tensor = dataclasses.field(repr=False)
    train_labels: torch.Tensor = dataclasses.field(repr=False)
    test_images: torch.Tensor = dataclasses.field(repr=False)
    test_labels: torch.Tensor = dataclasses.field(repr=False)
    source: str

    def __repr__(self) -> str:
        return (
            f"MNIST(train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"source={self.source!r})"
        )


def load_mnist(directory: str | os.PathLike[str]) -> MNIST:
    """Read MNIST from the four IDX files in ``directory``; never downloads anything.

    Each file may be plain or gzipped (``.gz``); a plain file is preferred when both
    exist. The files may lie in ``directory`` itself or in ``directory/MNIST/raw/``,
    where ``torchvision.datasets.MNIST(directory)`` keeps them.

    :raises DataError: the directory or a file is missing, or a file is malformed.
    """
    root = Path(directory)
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"MNIST directory {root} {problem}; {_DATA_DIR_HINT}")
    candidates = [root, root / "MNIST" / "raw"]
    for folder in candidates:
        paths = {role: _find(folder, name) for role, name in FILE_NAMES.items()}
        if all(p is not None for p in paths.values()):
            arrays = {role: read_idx(p) for role, p in paths.items() if p is not None}
            return _build(arrays, {role: str(p) for role, p in paths.items()}, str(root))
    missing = [name for name in FILE_NAMES.values() if _find(root, name) is None]
    raise DataError(
        f"MNIST directory {root} lacks {', '.join(missing)} (each plain or .gz; also looked "
        f"in {candidates[1]}); {_DATA_DIR_HINT}"
    )


def load_bundled_mnist() -> MNIST:
    """Read the MNIST sample shipped in the package (see ``mnist_sample/README.md``).

    It is read through :mod:`importlib.resources`, so it also works from a zipped wheel.
    """
    folder = resources.files("privfl.data").joinpath("mnist_sample")
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for role, name in FILE_NAMES.items():
        resource = folder.joinpath(f"{name}.gz")
        sources[role] = f"privfl/data/mnist_sample/{name}.gz"
        try:
            raw = resource.read_bytes()
        except OSError:
            raise DataError(
                f"{sources[role]}: the bundled MNIST sample is missing from the installed "
                "package; reinstall privfl"
            ) from None
        arrays[role] = parse_idx(raw, source=sources[role])
    return _build(arrays, sources, "privfl bundled sample (privfl/data/mnist_sample)")


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """Turn ``uint8`` images ``[N, 28, 28]`` into normalised ``float32`` ``[N, 1, 28, 28]``.

    Pixels are scaled to [0, 1] and then standardised with :data:`MNIST_MEAN` and
    :data:`MNIST_STD`, the usual MNIST input pipeline, in one fused affine step.
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(
            f"images_to_float expects a uint8 tensor [N, H, W], got {images.dtype} "
            f"{list(images.shape)}"
        )
    scale = 1.0 / (255.0 * MNIST_STD)
    return (images.unsqueeze(1).to(torch.float32) - 255.0 * MNIST_MEAN) * scale


def _find(folder: Path, name: str) -> Path | None:
    """Return ``folder/name`` or ``folder/name.gz``, whichever is a file (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _build(arrays: dict[str, np.ndarray], sources: dict[str, str], source: str) -> MNIST:
    """Check decoded arrays against the MNIST format and wrap them as tensors."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_src, labels_src = sources[f"{split}_images"], sources[f"{split}_labels"]
        _check(images.dtype == np.uint8 and images.ndim == 3, images_src, "uint8 images", images)
        _check(images.shape[1:] == (_SIDE, _SIDE), images_src, "images of 28x28 pixels", images)
        _check(labels.dtype == np.uint8 and labels.ndim == 1, labels_src, "uint8 labels", labels)
        if labels.size and int(labels.max()) >= _NUM_CLASSES:
            raise DataError(
                f"{labels_src}: holds label {int(labels.max())}, but MNIST labels are 0..9; "
                "the file is not an MNIST label file: use the official labels file"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{images_src} holds {len(images)} images but {labels_src} holds {len(labels)} "
                "labels; the two files come from different sets: use matching files"
            )
    tensors = {
        role: torch.from_numpy(a if role.endswith("images") else a.astype(np.int64))
        for role, a in arrays.items()
    }
    return MNIST(**tensors, source=source)


def _check(ok: bool, src: str, expected: str, array: np.ndarray) -> None:
    """Raise a DataError naming ``src`` unless ``ok``."""
    if not ok:
        raise DataError(
            f"{src}: expected {expected}, found {array.dtype} of shape {list(array.shape)}; "
            "the file is not the MNIST file of that name: use the official file"
        )
