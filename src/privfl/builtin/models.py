"""Built-in models: the McMahan et al. 2017 CNN and 2NN for MNIST; linear and MLP for tables."""

from __future__ import annotations

from privfl.algorithms.models import CNN, TwoNN
from privfl.algorithms.tabular_models import MLP, LinearModel
from privfl.plugins import hookimpl


@hookimpl
def privfl_register_models() -> list[type]:
    return [CNN, TwoNN, LinearModel, MLP]
