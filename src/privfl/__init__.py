"""privfl: privacy-preserving federated learning on PyTorch.

The Python API in a few names: build a :class:`Federation` from a model, data and a
partition, and call :meth:`Federation.run`. Plugins implement the hooks in
:mod:`privfl.hookspecs`, marked with :data:`hookimpl`, and register components that
subclass the base classes exported here.
"""

from privfl.client import ClientData, LocalTrainer, LocalTraining
from privfl.client_data import ClientDataSource, FolderData, PartitionedData, write_client_folders
from privfl.client_runtime import ClientApp, ClientHost
from privfl.components import (
    Aggregator,
    Attack,
    ClientSampler,
    Component,
    Datasets,
    DatasetSource,
    Evaluator,
    Executor,
    Partitioner,
    Sampling,
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
    UtilityWarning,
)
from privfl.federation import Federation, accuracy
from privfl.mechanisms import (
    Accountant,
    MechanismSetup,
    PrivacyMechanism,
    SecureSum,
    SecureSumClient,
)
from privfl.messages import Failure, Message, MessageError
from privfl.plugins import get_plugin_manager, hookimpl
from privfl.records import ClientResult, RoundRecord

__version__ = "0.1.0.dev0"

__all__ = [
    "Accountant",
    "Aggregator",
    "Attack",
    "ClientApp",
    "ClientData",
    "ClientDataSource",
    "ClientHost",
    "ClientResult",
    "ClientSampler",
    "Component",
    "ConfigError",
    "DataError",
    "DatasetSource",
    "Datasets",
    "Evaluator",
    "Executor",
    "Failure",
    "Federation",
    "FolderData",
    "LocalTrainer",
    "LocalTraining",
    "MechanismSetup",
    "Message",
    "MessageError",
    "PartitionedData",
    "Partitioner",
    "PluginError",
    "PrivacyMechanism",
    "PrivacyWarning",
    "PrivflError",
    "RoundAborted",
    "RoundRecord",
    "Sampling",
    "SecureSum",
    "SecureSumClient",
    "ServerOptimizer",
    "TensorPair",
    "UtilityWarning",
    "__version__",
    "accuracy",
    "get_plugin_manager",
    "hookimpl",
    "write_client_folders",
]
