"""Give an owner of the how-to its own MNIST digits, as a real owner would hold them.

``python owner_data.py OWNER CLIENT_ID FOLDER`` takes the owner's share of the MNIST
sample shipped with privfl (Alice: the first 300 training and 64 test digits; Bob:
the next ones) and writes it to FOLDER twice over:

- ``FOLDER/client-<CLIENT_ID>.safetensors``: the training digits, as the owner's
  SuperNode reads them (tensors ``inputs`` and ``targets``, see
  :func:`privfl.client_data.write_client_folders`);
- ``FOLDER/mnist/``: the four MNIST IDX files of the owner's digits, as
  ``privfl evaluate-party --role data-owner --data-dir`` reads them.

A real owner writes its own records the same way; nothing here is sent anywhere.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import torch

from privfl.client_data import write_client_folders
from privfl.components import TensorPair
from privfl.data.mnist import FILE_NAMES, images_to_float, load_bundled_mnist

OWNERS = ("alice", "bob")
TRAIN, TEST = 300, 64
"""Digits per owner: a few hundred keep the how-to quick on a laptop."""


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (magic 0x0000 0x08, dims, big-endian sizes)."""
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("owner", choices=OWNERS)
    parser.add_argument("client_id", type=int, help="the owner's privfl client id")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    k = OWNERS.index(args.owner)
    mnist = load_bundled_mnist()
    split = {
        "train_images": mnist.train_images[k * TRAIN : (k + 1) * TRAIN],
        "train_labels": mnist.train_labels[k * TRAIN : (k + 1) * TRAIN],
        "test_images": mnist.test_images[k * TEST : (k + 1) * TEST],
        "test_labels": mnist.test_labels[k * TEST : (k + 1) * TEST],
    }
    idx = args.folder / "mnist"
    idx.mkdir(parents=True, exist_ok=True)
    for role, name in FILE_NAMES.items():
        write_idx(idx / name, split[role])
    train = TensorPair(images_to_float(split["train_images"]), split["train_labels"])
    # write_client_folders writes clients 0..n-1: keep only this owner's file.
    everyone = [torch.arange(0)] * args.client_id + [torch.arange(TRAIN)]
    source = write_client_folders(args.folder, train, everyone)
    for other in range(args.client_id):
        source.path(other).unlink()
    print(
        f"{args.owner}: {TRAIN} training digits in {source.path(args.client_id)}, "
        f"{TEST} test digits in {idx}"
    )


if __name__ == "__main__":
    main()
