"""Built-in dataset sources: MNIST (IDX files or the bundled sample), CSV tables of
data owners, and the bundled diabetes table split between owners."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

from privfl.components import Datasets, DatasetSource, TensorPair
from privfl.data import diabetes
from privfl.data.mnist import images_to_float, load_bundled_mnist, load_mnist
from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl.seeding import derive_seed
from privfl.tabular_owners import (
    TabularOwner,
    TabularOwnerData,
    csv_owners,
    federated_scaling,
)


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


OWNER_DEFAULTS = MappingProxyType({"model": "mlp", "sampler": "all"})
"""A few owners of tables: an MLP, and every owner in every round."""


def _owner_datasets(
    owners: list[TabularOwner], source: str, *, scale_target: bool, labels: bool
) -> Datasets:
    """Owners as clients, scaled with the sums of their training rows (never pooled)."""
    scaling = federated_scaling(owners, scale_target=scale_target, labels=labels)
    data = TabularOwnerData(owners, scaling)
    test = data.test()
    if len(test) == 0:
        raise ConfigError("test_fraction", 0, "a fraction > 0: evaluators need held-out rows")
    scaled = (
        ""
        if labels or not scale_target
        else (
            f"; target standardised (mean {scaling.target_mean:.4g}, std {scaling.target_std:.4g})"
        )
    )
    return Datasets(train=None, test=test, source=f"{source}{scaled}", client_data=data)


class CSVSource(DatasetSource):
    """Tables in CSV files: a folder with one file per data owner (each owner is one
    client), or one file whose rows the partitioner splits among simulated clients.

    Every file has a header row and numeric cells; missing and non-numeric
    (categorical) values are refused, naming the file, line and column. Each owner
    holds out a seeded fraction of its rows for testing; features (and a regression
    target) are standardised with the sums of the owners' training rows
    (:mod:`privfl.tabular_owners`).

    :param data_dir: Where the data is; for ``csv``, a folder of ``*.csv`` files (one per
        owner) or one CSV file.
    :param target: The column to predict.
    :param features: The input columns; unset: every column but the target.
    :param test_fraction: The fraction of each owner's rows held out for testing.
    :param labels: The target holds class labels 0..C-1 (classification), not values.
    :param scale_target: Standardise a regression target (metrics are then in units
        of its standard deviation: an MSE of 0.5 leaves half the variance unexplained).
    :param split_seed: Seed of the held-out rows.
    """

    name = "csv"
    defaults = OWNER_DEFAULTS
    flags = MappingProxyType({"data_dir": "--data-dir", "target": "--target"})

    def __init__(
        self,
        data_dir: str | Path,
        target: str,
        features: Sequence[str] | None = None,
        test_fraction: float = 0.2,
        labels: bool = False,
        scale_target: bool = True,
        split_seed: int = 0,
    ) -> None:
        self.path = Path(data_dir)
        self.target = target
        self.features = None if features is None else list(features)
        self.test_fraction = test_fraction
        self.labels = labels
        self.scale_target = scale_target
        self.split_seed = split_seed

    def load(self) -> Datasets:
        owners = csv_owners(
            self.path,
            self.target,
            features=self.features,
            test_fraction=self.test_fraction,
            seed=self.split_seed,
        )
        if self.path.is_dir():
            return _owner_datasets(
                owners,
                f"{len(owners)} owners' CSV files in {self.path}",
                scale_target=self.scale_target,
                labels=self.labels,
            )
        data = _owner_datasets(
            owners, str(self.path), scale_target=self.scale_target, labels=self.labels
        )
        assert isinstance(data.client_data, TabularOwnerData)
        train = data.client_data.owners[0].train(data.client_data.scaling)
        return Datasets(train=train, test=data.test, source=data.source)


class DiabetesSource(DatasetSource):
    """The bundled diabetes table (Efron et al. 2004; 442 patients, 10 features, target
    ``progression``), dealt at random among ``owners`` data owners, one client each.

    Held-out rows and scaling are as for ``csv`` (:class:`CSVSource`).

    :param owners: How many data owners (clients) share the rows.
    :param test_fraction: The fraction of each owner's rows held out for testing.
    :param scale_target: Standardise the target (metrics in units of its std).
    :param split_seed: Seed of the owners' shares and of their held-out rows.
    """

    name = "diabetes"
    defaults = OWNER_DEFAULTS

    def __init__(
        self,
        owners: int = 2,
        test_fraction: float = 0.2,
        scale_target: bool = True,
        split_seed: int = 0,
    ) -> None:
        if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
            raise ConfigError("test_fraction", test_fraction, "a number in (0, 1)")
        self.owners = owners
        self.test_fraction = float(test_fraction)
        self.scale_target = scale_target
        self.split_seed = split_seed

    def load(self) -> Datasets:
        shares = diabetes.split_owners(
            diabetes.load_diabetes(), self.owners, seed=derive_seed(self.split_seed, "owners")
        )
        owners = [
            TabularOwner(
                share,
                f"owner {number}",
                self.test_fraction,
                derive_seed(self.split_seed, "holdout", number),
            )
            for number, share in enumerate(shares)
        ]
        return _owner_datasets(
            owners,
            f"{diabetes.SOURCE}, {self.owners} owners",
            scale_target=self.scale_target,
            labels=False,
        )


@hookimpl
def privfl_register_datasets() -> list[type]:
    return [MNISTSource, CSVSource, DiabetesSource]
