"""A secure-aggregation round driven by hand, step by step, for tests that read or
change the messages between the steps (the ``by_hand`` fixture)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfl.secagg import (
    KeyDirectory,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    trusted_setup,
)


class ByHand:
    """Every client of ``config`` (signing keys from a trusted setup) and the server.

    ``signing`` gives the keys and directory of an earlier round, so that two rounds
    share one PKI. Each step method sends the clients' messages of one phase to the server and keeps
    what the server sent back in :attr:`down`; ``transcript`` holds every message.
    """

    def __init__(
        self,
        config: SecAggConfig,
        signing: tuple[dict[int, Ed25519PrivateKey], KeyDirectory] | None = None,
    ) -> None:
        self.config = config
        self.signing_keys, self.directory = signing or trusted_setup(config.client_ids)
        self.clients = {
            u: SecAggClient(u, config, signing_key=self.signing_keys[u], directory=self.directory)
            for u in config.client_ids
        }
        self.server = SecAggServer(config, directory=self.directory)
        self.transcript: list[bytes] = []
        self.down: dict[int, bytes] = {}

    def _log(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        self.transcript.extend(messages.values())
        return dict(messages)

    def keys(self) -> dict[int, bytes]:
        up = self._log({u: c.advertise_keys() for u, c in self.clients.items()})
        self.down = self._log(self.server.collect_keys(up))
        return self.down

    def shares(self) -> dict[int, bytes]:
        up = self._log({u: self.clients[u].share_keys(m) for u, m in self.down.items()})
        self.down = self._log(self.server.relay_shares(up))
        return self.down

    def masked(self, inputs: Mapping[int, np.ndarray]) -> dict[int, bytes]:
        """The clients' masked inputs (not yet sent to the server)."""
        return self._log(
            {u: self.clients[u].masked_input(m, inputs[u]) for u, m in self.down.items()}
        )

    def survivors(self, masked: Mapping[int, bytes]) -> dict[int, bytes]:
        self.down = self._log(self.server.collect_masked_inputs(masked))
        return self.down

    def signatures(self) -> dict[int, bytes]:
        """The clients' signatures on the survivor set (not yet sent to the server)."""
        return self._log({u: self.clients[u].consistency_check(m) for u, m in self.down.items()})

    def requests(self, signatures: Mapping[int, bytes]) -> dict[int, bytes]:
        self.down = self._log(self.server.collect_signatures(signatures))
        return self.down

    def responses(self) -> dict[int, bytes]:
        """The clients' shares (not yet sent to the server)."""
        return self._log({u: self.clients[u].unmask(m) for u, m in self.down.items()})

    def run(self, inputs: Mapping[int, np.ndarray]) -> np.ndarray:
        """A whole honest round: the sum the server learns."""
        self.keys()
        self.shares()
        self.survivors(self.masked(inputs))
        self.requests(self.signatures())
        return self.server.unmask(self._log(self.responses()))


@pytest.fixture
def by_hand() -> type[ByHand]:
    return ByHand
