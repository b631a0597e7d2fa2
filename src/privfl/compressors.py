"""Base class of update compressors, and the rules for combining them with privacy.

A :class:`Compressor` has a client half, :meth:`~Compressor.encode`, which turns a
client's update into the bytes that cross the message boundary, and a server half,
:meth:`~Compressor.decode`, which turns those bytes back into an update before
aggregation. The client half runs after every privacy mechanism's client step (so
under client-level DP the update is clipped, and noised where the clients add noise,
before it is compressed); :func:`check_compression` states and enforces at configure
time which combinations keep their guarantees.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from privfl.components import Component, Executor
from privfl.errors import ConfigError
from privfl.mechanisms import PrivacyMechanism


class Compressor(Component):
    """Encodes a client's update into few bytes where the client runs; decodes on the server.

    :meth:`setup` runs on the server half before the first round;
    :meth:`~privfl.Compressor.client_config` says per round what every client needs
    (such as the seed of a shared rotation) and travels in the ``train`` message;
    :meth:`encode` runs in the client half and :meth:`decode` in the server half. The
    length of the encoded bytes is what a round records as ``uplink_bytes``.
    """

    dimension: int = 0
    """The length of an update, set by :meth:`setup`."""

    def setup(self, *, dimension: int, seed: int) -> None:
        """Server half: remember the update length and the federation's root seed."""
        self.dimension = dimension
        self.seed = seed

    def client_config(self, *, round: int) -> dict[str, Any]:
        """Server half: JSON-safe values every client needs this round; default: none."""
        return {}

    @property
    def keeps_state(self) -> bool:
        """True when each client keeps state between rounds (error feedback's residual)."""
        return False

    @property
    def keeps_norm_bound(self) -> bool:
        """True when a decoded update's L2 norm never exceeds the encoded update's, so a
        clip norm set before compression still bounds what the server aggregates."""
        return False

    @abstractmethod
    def encode(
        self,
        update: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generator: torch.Generator,
        state: dict[str, torch.Tensor],
    ) -> bytes:
        """Client half: the bytes that stand for ``update`` (a flat float32 vector).

        :param config: This round's :meth:`~privfl.Compressor.client_config`, as the
            client received it.
        :param generator: Randomness derived from (seed, round, client).
        :param state: This client's table of :class:`~privfl.client_state.ClientStates`,
            to read and replace (error feedback keeps its residual there).
        """

    @abstractmethod
    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        """Server half: the flat float32 update that ``data`` stands for.

        :raises ValueError: when ``data`` is not an encoding of this compressor.
        """


def check_compression(
    compressor: Compressor,
    mechanisms: Sequence[PrivacyMechanism],
    executor: Executor,
    secure_position: int | None,
) -> None:
    """Refuse combinations of a compressor with privacy mechanisms or an executor that
    would not keep their promises, naming the fix.

    - **Secure aggregation**: refused. The server sees only the sum of the clients'
      masked vectors, which secure aggregation already encodes in its own fixed-point
      ring (a linear quantizer whose bytes it counts); these compressors' codes carry
      per-client norms, indices or seeds that do not add up across clients.
    - **Client-level DP** that bounds each client's share (``fixed_denominator``) with
      noise added after the client half (``mode`` ``central`` or ``distributed``): the
      compressor must keep the clip norm (:attr:`~privfl.Compressor.keeps_norm_bound`), since
      the accountant assumes every contribution to the sum has norm at most ``C``.
      With ``mode = "local"`` each client's update is already private when it is
      compressed, and compression is post-processing: any compressor is allowed.
    - **State between rounds** (error feedback): the executor must run clients in this
      process (:attr:`~privfl.Executor.clients_in_process`), so that checkpoints hold
      their residuals.

    :raises ConfigError: for a combination above that is refused.
    """
    name = compressor.name
    if secure_position is not None:
        raise ConfigError(
            "compressor",
            name,
            f"no compressor with {mechanisms[secure_position].name}: secure aggregation "
            "reveals only the sum, which it already encodes in its own fixed-point ring; "
            f"{name}'s codes (per-client norms, indices, seeds) do not add up across "
            "clients. Drop the compressor or the secure-aggregation mechanism",
        )
    for mechanism in mechanisms:
        noise_after = getattr(mechanism, "mode", "central") != "local"
        if mechanism.fixed_denominator and noise_after and not compressor.keeps_norm_bound:
            raise ConfigError(
                "compressor",
                name,
                f"a compressor that keeps the clip norm with {mechanism.name} (the accountant "
                f"assumes each client's contribution has norm at most the clip; {name}'s "
                "decoded update can exceed it): use topk with error_feedback = false, or "
                "random-mask with unbiased = false, or set the mechanism's mode = "
                '"local" so that compression only post-processes a private update',
            )
    if compressor.keeps_state and not executor.clients_in_process:
        raise ConfigError(
            "compressor",
            name,
            f"an executor whose clients run in this process (serial, vectorized) for {name} "
            f"with error feedback: each client keeps a residual between rounds, and with "
            f"executor {executor.name!r} it lives where checkpoints cannot reach it; or "
            "set error_feedback = false",
        )
