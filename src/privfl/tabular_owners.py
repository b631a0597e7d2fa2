"""Data owners that hold tables (a CSV file each): held-out rows and federated scaling.

Cross-silo learning has a few owners (two hospitals, two banks), each with its own
table. Each :class:`TabularOwner` keeps a seeded fraction of its rows for testing and
computes, on its own, the column sums of its training rows
(:func:`privfl.data.tabular.moments`). :func:`federated_scaling` adds the owners' sums
and turns the totals into one standardisation for everyone; no owner's rows leave
it. The server learns the per-column counts, sums and sums of squares of the union
of the owners' training rows, which is what the scale needs, in the clear (not
behind secure aggregation: the sums are combined before the federation and its
secure-aggregation mechanism exist).

:class:`TabularOwnerData` is the clients' data source: client ``k`` is owner ``k``
and loads only its own rows, scaled. The held-out rows of all owners, scaled the
same way, form the test split that evaluators score (in a deployment each owner
would score its own; the federation's evaluators need them in one place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privfl.client import ClientData
from privfl.client_data import ClientDataSource
from privfl.components import TensorPair
from privfl.data.tabular import (
    Table,
    combine_moments,
    holdout,
    moments,
    read_csv,
    standardization,
)
from privfl.errors import ConfigError, DataError
from privfl.seeding import derive_seed


@dataclass(frozen=True)
class Scaling:
    """One standardisation for all owners: ``(x - mean) / std`` per feature column,
    and for a regression target too (mean 0 and std 1 leave it as it is).

    :ivar labels: The target holds class labels, read as int64.
    """

    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float = 0.0
    target_std: float = 1.0
    labels: bool = False

    def apply(self, table: Table) -> TensorPair:
        """The table's rows as float32 scaled features and targets (int64 labels)."""
        inputs = torch.from_numpy((table.features - self.feature_mean) / self.feature_std)
        if self.labels:
            targets = torch.from_numpy(table.targets).to(torch.int64)
        else:
            scaled = (table.targets - self.target_mean) / self.target_std
            targets = torch.from_numpy(scaled).float()
        return TensorPair(inputs.float(), targets)


class TabularOwner:
    """One owner's table, split into training and held-out rows with its own seed.

    :param table: The owner's rows.
    :param name: How errors and the data's description name the owner (its file).
    :param test_fraction: The fraction of rows held out for testing, in [0, 1).
    :param seed: Seed of the held-out rows' choice.
    """

    def __init__(self, table: Table, name: str, test_fraction: float, seed: int) -> None:
        if len(table) < 2:
            raise DataError(f"{name}: {len(table)} row; an owner needs at least 2")
        self.table = table
        self.name = name
        self.train_rows, self.test_rows = holdout(len(table), test_fraction, seed)

    def moments(self, labels: bool) -> np.ndarray:
        """Column sums of this owner's training rows (features, then the target unless
        it holds labels): all that the owner shares for scaling."""
        rows = self.table.rows(self.train_rows)
        if labels:
            return moments(rows.features)
        return moments(np.column_stack([rows.features, rows.targets]))

    def train(self, scaling: Scaling) -> TensorPair:
        """This owner's training rows, scaled."""
        return scaling.apply(self.table.rows(self.train_rows))

    def test(self, scaling: Scaling) -> TensorPair:
        """This owner's held-out rows, scaled."""
        return scaling.apply(self.table.rows(self.test_rows))


def federated_scaling(
    owners: Sequence[TabularOwner], *, scale_target: bool = True, labels: bool = False
) -> Scaling:
    """The standardisation of the union of the owners' training rows, from their sums.

    :param scale_target: Standardise a regression target too (metrics are then in
        units of the target's standard deviation).
    :param labels: The target holds class labels (never scaled).
    """
    columns = {owner.table.columns for owner in owners}
    if len(columns) != 1:
        names = "; ".join(f"{o.name}: {', '.join(o.table.columns)}" for o in owners)
        raise DataError(f"the owners' feature columns differ ({names})")
    mean, std = standardization(combine_moments([o.moments(labels) for o in owners]))
    if labels:
        return Scaling(mean, std, labels=True)
    if not scale_target:
        return Scaling(mean[:-1], std[:-1])
    return Scaling(mean[:-1], std[:-1], float(mean[-1]), float(std[-1]))


class TabularOwnerData(ClientDataSource):
    """Clients that are tabular data owners: client ``k`` loads owner ``k``'s rows.

    :param owners: The owners, in client order.
    :param scaling: The scaling every owner applies (from :func:`federated_scaling`).
    """

    def __init__(self, owners: Sequence[TabularOwner], scaling: Scaling) -> None:
        if not owners:
            raise ConfigError("owners", [], "at least one data owner")
        self.owners = list(owners)
        self.scaling = scaling

    @property
    def num_clients(self) -> int:
        return len(self.owners)

    def load(self, client_id: int) -> ClientData:
        return ClientData.owned(self.owners[client_id].train(self.scaling))

    def test(self) -> TensorPair:
        """Every owner's held-out rows, scaled, in owner order."""
        parts = [owner.test(self.scaling) for owner in self.owners]
        return TensorPair(
            torch.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts])
        )


def csv_owners(
    path: str | Path,
    target: str,
    *,
    features: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[TabularOwner]:
    """Read one owner per CSV file: ``path`` itself, or each ``*.csv`` of the folder
    ``path`` in name order. Each owner's held-out rows come from its own seed.

    :raises DataError: for a folder without CSV files, or a bad file (naming it).
    """
    if not (isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1):
        raise ConfigError("test_fraction", test_fraction, "a number in [0, 1)")
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: a folder without CSV files (one *.csv file per owner)")
    return [
        TabularOwner(
            read_csv(file, target, features),
            str(file),
            test_fraction,
            derive_seed(seed, "holdout", number),
        )
        for number, file in enumerate(files)
    ]
