"""State that client halves keep between rounds, one table per client.

Most client halves keep nothing between rounds. Error feedback (see
:mod:`privfl.algorithms.compression`) does: each client carries the part of its
updates that it has not sent yet. A :class:`ClientStates` holds those tables; a
federation whose clients run in its own process (executors with
:attr:`~privfl.Executor.clients_in_process`) checkpoints it with the server's state,
so a run killed and resumed gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class ClientStates:
    """Each client's named tensors, kept where the client half runs.

    A client half reads and replaces entries of its own table (:meth:`of`); tensors are
    replaced, never changed in place, so a checkpoint may hold them without a copy.
    """

    def __init__(self) -> None:
        self._tables: dict[int, dict[str, torch.Tensor]] = {}

    def of(self, client_id: int) -> dict[str, torch.Tensor]:
        """The table of ``client_id`` (created empty on first use)."""
        return self._tables.setdefault(client_id, {})

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every entry as ``"<client>.<name>"`` -> tensor, for a checkpoint."""
        return {
            f"{client}.{name}": tensor
            for client, table in sorted(self._tables.items())
            for name, tensor in sorted(table.items())
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace every table with the entries of :meth:`state_dict`."""
        tables: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            client, _, name = key.partition(".")
            if not (client.isdigit() and name and isinstance(tensor, torch.Tensor)):
                raise ValueError(f"client state entry {key!r} is not '<client>.<name>' -> tensor")
            tables.setdefault(int(client), {})[name] = tensor.clone()
        self._tables = tables
