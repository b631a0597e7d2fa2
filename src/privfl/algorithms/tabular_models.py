"""Models for tabular data: linear regression and a multilayer perceptron.

Both map ``[n, in_features]`` rows to ``[n, out_features]`` outputs (one column for
a regression target, one logit per class for classification). ``in_features = 0``
means "as many as the dataset has": the command line fills it in from the data.
They are :class:`torch.nn.Sequential` stacks of ``Linear`` and ``ReLU`` layers, so
the vectorized executor can stack them and the ``smpc`` evaluator can run them on
secret shares.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import ClassVar

from torch import nn

from privfl.errors import ConfigError


def _width(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")
    return value


class LinearModel(nn.Sequential):
    """A linear model ``x @ W + b`` (linear regression with the MSE loss).

    :param in_features: Input columns (0: the dataset's, filled in by the command line).
    :param out_features: Outputs: 1 for a regression target, C for C classes.
    """

    name: ClassVar[str] = "linear"

    def __init__(self, in_features: int = 0, out_features: int = 1) -> None:
        super().__init__(
            nn.Linear(
                _width("in_features", in_features, 1), _width("out_features", out_features, 1)
            )
        )


class MLP(nn.Sequential):
    """A multilayer perceptron: ``Linear`` layers of the given widths with ReLU between.

    :param in_features: Input columns (0: the dataset's, filled in by the command line).
    :param widths: Hidden layer widths, e.g. ``[64, 64]``; empty: a linear model.
    :param out_features: Outputs: 1 for a regression target, C for C classes.
    """

    name: ClassVar[str] = "mlp"

    def __init__(
        self, in_features: int = 0, widths: Sequence[int] = (64,), out_features: int = 1
    ) -> None:
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise ConfigError("widths", widths, "a list of hidden layer widths, e.g. [64, 64]")
        sizes = [
            _width("in_features", in_features, 1),
            *(_width("widths", w, 1) for w in widths),
            _width("out_features", out_features, 1),
        ]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        super().__init__(*layers[:-1])
