"""Built-in dataset source: MNIST from a folder of IDX files, or the bundled sample."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from privfl.components import Datasets, DatasetSource, TensorPair
from privfl.data.mnist import images_to_float, load_bundled_mnist, load_mnist
from privfl.plugins import hookimpl


class MNISTSource(DatasetSource):
    """MNIST read from ``data_dir`` (never downloaded), or the sample shipped with privfl.

    :param data_dir: A folder holding the four IDX files (gzipped or not), directly or
        in torchvision's ``MNIST/raw`` layout; ``None`` uses the bundled sample.
    """

    name = "mnist"
    flags = MappingProxyType({"data_dir": "--data-dir"})

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = data_dir

    def load(self) -> Datasets:
        data = load_mnist(self.data_dir) if self.data_dir is not None else load_bundled_mnist()
        return Datasets(
            train=TensorPair(images_to_float(data.train_images), data.train_labels),
            test=TensorPair(images_to_float(data.test_images), data.test_labels),
            source=data.source,
        )


@hookimpl
def privfl_register_datasets() -> list[type]:
    return [MNISTSource]
