"""Where a client half finds its own training data.

A :class:`ClientDataSource` maps a client id to that client's :class:`ClientData`.
Two sources come with privfl:

- :class:`PartitionedData` simulates many data owners from one dataset and a
  partition: each client's data is its index array into the shared tensors, built on
  demand, so 10,000 clients cost 10,000 small index arrays and nothing more;
- :class:`FolderData` is what real data owners have: each client reads its own file,
  ``ROOT/client-<id>.safetensors`` (tensors ``inputs`` and ``targets``), and nothing
  else. :func:`write_client_folders` writes such files from a partition, to try the
  multi-owner set-up on one machine.

Both give the same bytes for the same examples, so a run on owners' folders equals the
simulation of the same split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from privfl.client import ClientData
from privfl.components import TensorPair
from privfl.errors import ConfigError, DataError


class ClientDataSource(ABC):
    """Gives each client half its own training data."""

    @property
    @abstractmethod
    def num_clients(self) -> int:
        """How many clients (ids ``0 .. num_clients - 1``) the source serves."""

    @abstractmethod
    def load(self, client_id: int) -> ClientData:
        """Return the training data of ``client_id``."""


class PartitionedData(ClientDataSource):
    """Simulated owners: client ``k`` holds the rows ``partition[k]`` of ``train``.

    :param train: The dataset all simulated clients index into.
    :param partition: One int64 index tensor per client.
    """

    def __init__(self, train: TensorPair, partition: Sequence[torch.Tensor]) -> None:
        self.train = train
        self.partition = list(partition)

    @property
    def num_clients(self) -> int:
        return len(self.partition)

    def load(self, client_id: int) -> ClientData:
        return ClientData(self.train, self.partition[client_id])


class FolderData(ClientDataSource):
    """Real owners: client ``k`` reads ``ROOT/client-<k>.safetensors`` and nothing else.

    :param root: The folder (on a real deployment each owner has its own, holding
        only its own file).
    :param num_clients: How many clients the federation has.
    """

    def __init__(self, root: str | Path, num_clients: int) -> None:
        if not (isinstance(num_clients, int) and num_clients >= 1):
            raise ConfigError("num_clients", num_clients, "an integer >= 1")
        self.root = Path(root)
        self._num_clients = num_clients

    @property
    def num_clients(self) -> int:
        return self._num_clients

    def path(self, client_id: int) -> Path:
        """The file that holds ``client_id``'s examples."""
        return self.root / f"client-{client_id}.safetensors"

    def load(self, client_id: int) -> ClientData:
        path = self.path(client_id)
        try:
            tensors = load_file(path)
            examples = TensorPair(tensors["inputs"], tensors["targets"])
        except FileNotFoundError:
            raise DataError(f"client {client_id} has no data file {path}") from None
        except (KeyError, ValueError, OSError) as error:
            raise DataError(
                f"{path}: not a client data file with tensors 'inputs' and 'targets' ({error})"
            ) from None
        if len(examples) == 0:
            raise DataError(f"{path} holds no examples")
        return ClientData.owned(examples)


def known_targets(data: ClientDataSource, test: TensorPair | None) -> torch.Tensor | None:
    """Targets the server half may look at to infer the task: the simulated training
    data's, else the test split's (never a real owner's)."""
    if isinstance(data, PartitionedData):
        return data.train.targets
    return test.targets if test is not None else None


def num_classes(data: ClientDataSource, test: TensorPair | None) -> int:
    """Number of classes, for label attacks: the simulated training data's, else the
    test split's, else client 0's."""
    pair = data.train if isinstance(data, PartitionedData) else test
    return int((pair or data.load(0).examples).targets.max()) + 1


def write_client_folders(
    root: str | Path, train: TensorPair, partition: Sequence[torch.Tensor]
) -> FolderData:
    """Write each client's rows of ``train`` to its own file under ``root``; return the source."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    source = FolderData(root, len(partition))
    for client_id, indices in enumerate(partition):
        indices = torch.as_tensor(indices, dtype=torch.int64)
        save_file(
            {
                "inputs": train.inputs.index_select(0, indices).contiguous(),
                "targets": train.targets.index_select(0, indices).contiguous(),
            },
            source.path(client_id),
        )
    return source


def client_data_source(
    train: Any,
    partition: Sequence[np.ndarray | torch.Tensor] | None,
    client_data: ClientDataSource | None,
) -> ClientDataSource:
    """Return the clients' data source: ``client_data``, or simulated owners of the rows
    ``partition`` gives each client of ``train``."""
    if client_data is not None:
        if train is not None or partition is not None:
            raise ConfigError(
                "client_data",
                type(client_data).__name__,
                "either client_data or train and partition, not both",
            )
        return client_data
    if train is None or partition is None:
        raise ConfigError(
            "train", None, "training data and a partition, or client_data (each client's own data)"
        )
    pair = as_pair(train, "train")
    return PartitionedData(pair, check_partition(partition, len(pair)))


def as_pair(data: Any, key: str) -> TensorPair:
    """Return ``data`` as a :class:`TensorPair`.

    ``data`` may be a :class:`TensorPair`, an ``(inputs, targets)`` pair of tensors, a
    ``torch.utils.data.TensorDataset`` of two tensors, a ``DataLoader`` over such
    datasets, or any map-style dataset (``len`` and ``[i]`` giving an ``(input,
    target)`` pair) that fits in memory: its examples are read once and stacked.
    """
    if isinstance(data, TensorPair):
        return data
    if isinstance(data, DataLoader):
        return as_pair(data.dataset, key)
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ConfigError(
                key, f"TensorDataset of {len(data.tensors)} tensors", "(inputs, targets) tensors"
            )
        return TensorPair(*data.tensors)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        return TensorPair(*data)
    if isinstance(data, IterableDataset) or not (
        hasattr(data, "__len__") and hasattr(data, "__getitem__")
    ):
        raise ConfigError(
            key,
            type(data).__name__,
            "a TensorPair, (inputs, targets) tensors, a TensorDataset, or a map-style "
            "dataset (len and [i]) of (input, target) examples",
        )
    return _stack_examples(data, key)


def _stack_examples(dataset: Any, key: str) -> TensorPair:
    """Read every ``(input, target)`` example of a map-style dataset into two tensors."""
    if len(dataset) == 0:
        raise ConfigError(key, f"empty {type(dataset).__name__}", "at least one example")
    inputs, targets = [], []
    for index in range(len(dataset)):
        example = dataset[index]
        if not (isinstance(example, (tuple, list)) and len(example) == 2):
            raise ConfigError(f"{key}[{index}]", type(example).__name__, "an (input, target) pair")
        inputs.append(torch.as_tensor(example[0]))
        targets.append(torch.as_tensor(example[1]))
    try:
        return TensorPair(torch.stack(inputs), torch.stack(targets))
    except RuntimeError as error:
        raise ConfigError(key, type(dataset).__name__, f"examples of one shape ({error})") from None


def check_partition(
    partition: Sequence[np.ndarray | torch.Tensor], num_examples: int
) -> list[torch.Tensor]:
    """Return the partition as int64 tensors; refuse empty clients and indices outside
    the dataset."""
    if len(partition) == 0:
        raise ConfigError("partition", "[]", "at least one client")
    tensors = [torch.as_tensor(np.asarray(p), dtype=torch.int64) for p in partition]
    for client, indices in enumerate(tensors):
        if len(indices) == 0:
            raise ConfigError(f"partition[{client}]", "[]", "at least one example per client")
        if int(indices.min()) < 0 or int(indices.max()) >= num_examples:
            raise ConfigError(
                f"partition[{client}]", "out-of-range indices", f"indices in 0..{num_examples - 1}"
            )
    return tensors
