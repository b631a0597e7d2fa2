"""privfl: privacy-preserving federated learning on PyTorch.

The Python API in a few names: build a :class:`Federation` from a model, data and a
partition, and call :meth:`Federation.run`. Plugins implement the hooks in
:mod:`privfl.hookspecs`, marked with :data:`hookimpl`, and register components that
subclass the base classes exported here.
"""

from privfl.client import ClientWork, LocalTraining
from privfl.components import (
    Accountant,
    Aggregator,
    Attack,
    ClientSampler,
    Component,
    Datasets,
    DatasetSource,
    Evaluator,
    Executor,
    Partitioner,
    PrivacyMechanism,
    Sampling,
    SecureSum,
    ServerOptimizer,
    TensorPair,
)
from privfl.errors import (
    ConfigError,
    DataError,
    PluginError,
    PrivacyWarning,
    PrivflError,
    RoundAborted,
)
from privfl.federation import Federation, accuracy
from privfl.plugins import get_plugin_manager, hookimpl
from privfl.records import ClientResult, ClientTask, RoundRecord

__version__ = "0.1.0.dev0"

__all__ = [
    "Accountant",
    "Aggregator",
    "Attack",
    "ClientResult",
    "ClientSampler",
    "ClientTask",
    "ClientWork",
    "Component",
    "ConfigError",
    "DataError",
    "DatasetSource",
    "Datasets",
    "Evaluator",
    "Executor",
    "Federation",
    "LocalTraining",
    "Partitioner",
    "PluginError",
    "PrivacyMechanism",
    "PrivacyWarning",
    "PrivflError",
    "RoundAborted",
    "RoundRecord",
    "Sampling",
    "SecureSum",
    "ServerOptimizer",
    "TensorPair",
    "__version__",
    "accuracy",
    "get_plugin_manager",
    "hookimpl",
]
