"""privfl: privacy-preserving federated learning on PyTorch.

The Python API in a few names: build a :class:`Federation` from a model, data and a
partition, and call :meth:`Federation.run`. Plugins implement the hooks in
:mod:`privfl.hookspecs`, marked with :data:`hookimpl`, and register components that
subclass the base classes exported here.

Two environment settings, each only where the user has set none of its own:

- ``GOMP_SPINCOUNT=30000``, when privfl is imported before torch: torch's OpenMP
  threads spin for about 30,000 iterations (tens of microseconds) when they run out
  of work, then sleep. libgomp's default spins ten times longer, so on a machine whose
  other cores are busy a two-thread operation waits for a spinning thread that lost
  its core (the same stacked 2NN round: 0.05 s quiet, 0.3-2.2 s with two busy
  processes); never spinning (``OMP_WAIT_POLICY=PASSIVE``) pays a wake-up on every
  operation instead (0.09 s quiet). With 30,000: 0.05 s quiet, 0.12 s under that load.
  Setting ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` yourself keeps your choice.
- ``THP_MEM_ALLOC_ENABLE=1``: torch backs large CPU tensors with transparent huge
  pages, which halves the page faults of a round's fresh update matrix (80 MB for 100
  clients of the 2NN: 36 ms to fill fresh, 19 ms with huge pages). ``0`` turns it off.

privfl logs through the standard :mod:`logging` module, under the ``privfl`` logger,
and adds no handler but a :class:`logging.NullHandler`: an application chooses where
the log goes (the ``privfl`` command sends it to standard error; ``--verbose`` shows
its debug messages).
"""

import logging
import os
import sys

if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "30000"
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read at torch's first large allocation

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
from privfl.compressors import Compressor
from privfl.errors import (
    ClientError,
    ConfigError,
    DataError,
    PerformanceWarning,
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

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0.dev0"

__all__ = [
    "Accountant",
    "Aggregator",
    "Attack",
    "ClientApp",
    "ClientData",
    "ClientDataSource",
    "ClientError",
    "ClientHost",
    "ClientResult",
    "ClientSampler",
    "Component",
    "Compressor",
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
    "PerformanceWarning",
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
