"""Tabular data: numeric CSV files, held-out rows, and feature scaling from summed moments.

:func:`read_csv` reads one data owner's CSV file (a header row, then one example per
row) into a feature matrix and a target column, refusing with the file, line and
column named: a missing value (an empty cell, ``NA``, ``nan``), a non-numeric
(categorical) value, an infinite one, or a row of the wrong length. Categorical
columns must be encoded as numbers by the owner first (one 0/1 column per
category), or left out with ``features``.

Scaling is standardisation, ``(x - mean) / std``, with the mean and standard
deviation of the *union* of the owners' training rows, computed without pooling a
row: each owner sums its own rows (:func:`moments`: count, sum and sum of squares
per column), the sums are added (:func:`combine_moments`), and the scale follows
from the totals (:func:`standardization`). The sum of squares in float64 is exact
enough for columns whose mean is not many orders of magnitude above their spread
(the textbook one-pass formula, see Chan, Golub and LeVeque 1983, "Algorithms for
computing the sample variance", The American Statistician 37(3)).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privfl.errors import DataError

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
"""Cell texts read as a missing value (case-insensitive, after stripping spaces)."""


@dataclass(frozen=True)
class Table:
    """One owner's rows: float64 ``features`` ``[n, d]``, ``targets`` ``[n]``, column names."""

    features: np.ndarray
    targets: np.ndarray
    columns: tuple[str, ...]
    target: str

    def __len__(self) -> int:
        return len(self.targets)

    def rows(self, indices: np.ndarray) -> Table:
        """The rows ``indices`` of this table."""
        return Table(self.features[indices], self.targets[indices], self.columns, self.target)


def read_csv(path: str | Path, target: str, features: Sequence[str] | None = None) -> Table:
    """Read a numeric CSV file with a header row into features and targets.

    :param target: The column to predict.
    :param features: The input columns, in this order; unset: every other column.
    :raises DataError: naming the file, line and column of the first bad cell.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise DataError(f"{path}: empty file; expected a header row naming the columns")
    header = [cell.strip() for cell in lines[0]]
    chosen = [c for c in header if c != target] if features is None else list(features)
    for key, column in [("target", target), *(("features", c) for c in chosen)]:
        if column not in header:
            raise DataError(
                f"{path}: no column {column!r} (the {key}); the header has {', '.join(header)}"
            )
    if target in chosen:
        raise DataError(f"{path}: the target column {target!r} is also a feature column")
    if not chosen:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    positions = [header.index(c) for c in chosen]
    target_at = header.index(target)
    data = [(number, row) for number, row in enumerate(lines[1:], start=2) if any(row)]
    if not data:
        raise DataError(f"{path}: no data rows after the header")
    values = np.empty((len(data), len(chosen)))
    targets = np.empty(len(data))
    for i, (number, row) in enumerate(data):
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {number}: {len(row)} fields, but the header has {len(header)}"
            )
        for j, at in enumerate(positions):
            values[i, j] = _number(row[at], path, number, header[at])
        targets[i] = _number(row[target_at], path, number, target)
    return Table(values, targets, tuple(chosen), target)


def _number(cell: str, path: Path, line: int, column: str) -> float:
    text = cell.strip()
    where = f"{path}, line {line}, column {column!r}"
    if text.lower() in MISSING:
        raise DataError(
            f"{where}: missing value {cell!r}; missing values are refused: drop or impute "
            "the row before training"
        )
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{where}: {cell!r} is not a number; categorical columns must be encoded as "
            "numbers first (one 0/1 column per category) or left out of the features"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {cell!r} is not a finite number")
    return value


def holdout(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(count)`` at random into (training rows, held-out rows), both sorted.

    ``round(fraction * count)`` rows are held out, at least one when ``fraction > 0``
    and at least one row is left to train on.
    """
    held = min(max(round(fraction * count), 1 if fraction > 0 else 0), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def moments(values: np.ndarray) -> np.ndarray:
    """Per-column count, sum and sum of squares of ``values`` (``[n]`` or ``[n, d]``):
    a ``[3, d]`` float64 array that owners add up instead of pooling rows."""
    matrix = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    count = np.full(matrix.shape[1], float(len(matrix)))
    return np.stack([count, matrix.sum(axis=0), np.square(matrix).sum(axis=0)])


def combine_moments(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The moments of the union of the owners' rows: the sum of their moments."""
    return np.sum(np.stack(list(parts)), axis=0)


def standardization(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (denominator n) per column from summed moments.

    A constant column gets standard deviation 1, so it scales to zeros, not NaN.
    """
    count, total_sum, total_squares = total
    mean = total_sum / count
    variance = np.maximum(total_squares / count - np.square(mean), 0.0)
    std = np.sqrt(variance)
    return mean, np.where(std > 0, std, 1.0)


def write_csv(path: str | Path, columns: Sequence[str], rows: np.ndarray) -> Path:
    """Write ``rows`` (``[n, len(columns)]``) under a header of ``columns``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([[repr(float(v)) if v % 1 else int(v) for v in row] for row in rows])
    return path
