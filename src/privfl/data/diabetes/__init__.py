"""The diabetes data of Efron et al. 2004, bundled (BSD 3-Clause, see ``README.md`` here).

442 patients, ten baseline variables and a measure of disease progression one year
later (the regression target, column ``progression``). :func:`split_owners` deals the
rows among data owners, such as two hospitals, and :func:`write_owner_csvs` writes
each owner's share to its own CSV file, to try a cross-silo federation on one machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from privfl.data.tabular import Table, read_csv, write_csv
from privfl.errors import ConfigError

TARGET = "progression"
"""The target column."""

SOURCE = "diabetes data of Efron et al. 2004, bundled with privfl (BSD 3-Clause)"


def load_diabetes() -> Table:
    """Read the bundled table: ten feature columns and the target ``progression``."""
    with resources.as_file(resources.files(__name__).joinpath("diabetes.csv")) as path:
        return read_csv(path, TARGET)


def split_owners(table: Table, owners: int, *, seed: int) -> list[Table]:
    """Deal ``table``'s rows at random among ``owners`` owners in near-equal shares."""
    if not (isinstance(owners, int) and 1 <= owners <= len(table) // 2):
        raise ConfigError("owners", owners, f"an integer from 1 to {len(table) // 2}")
    order = np.random.default_rng(seed).permutation(len(table))
    return [table.rows(np.sort(part)) for part in np.array_split(order, owners)]


def write_owner_csvs(
    root: str | Path, names: Sequence[str] = ("alice", "bob"), *, seed: int = 0
) -> list[Path]:
    """Write each owner's share of the bundled rows to ``root/NAME.csv``; return the paths."""
    table = load_diabetes()
    header = [*table.columns, table.target]
    return [
        write_csv(
            Path(root) / f"{name}.csv", header, np.column_stack([part.features, part.targets])
        )
        for name, part in zip(names, split_owners(table, len(names), seed=seed), strict=True)
    ]
