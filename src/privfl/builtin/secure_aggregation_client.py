"""The client half of built-in secure aggregation: what a client's host keeps between
the protocol's messages, and the checks a client makes on the server's round settings.

:class:`SecAggProtocolClient` holds one client's encoded contribution (fixed-point
values, or a shared grid's integer codes) and its :class:`~privfl.secagg.client.SecAggClient`
state; the mechanism (:mod:`privfl.builtin.secure_aggregation`) builds one per client
and round from the task's config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfl.builtin.secure_quantizer import GridCoding
from privfl.errors import DataError
from privfl.mechanisms import SecureSumClient
from privfl.secagg import (
    KeyDirectory,
    ProtocolError,
    SecAggClient,
    SecAggConfig,
    encode,
    encoded_bound,
    secagg_plus_parameters,
    secagg_threshold,
)
from privfl.secagg.arena import MessageArena
from privfl.secagg.messages import MaskedInput
from privfl.seeding import torch_generator

PHASE_STEPS = {
    "share_keys": "share_keys",
    "masked_input": "masked_input",
    "consistency_check": "consistency_check",
    "unmasking": "unmask",
}
"""Phase of the client's reply -> the :class:`SecAggClient` method that writes it."""


class SecAggProtocolClient(SecureSumClient):
    """One client's side of a SecAgg round: its encoded contribution and protocol state."""

    first_phase = "advertise_keys"

    def __init__(
        self,
        client_id: int,
        config: SecAggConfig,
        frac_bits: int,
        bound: float,
        *,
        signing_key: Ed25519PrivateKey,
        directory: KeyDirectory,
        coding: tuple[GridCoding, torch.Generator] | None = None,
        arena: MessageArena | None = None,
    ) -> None:
        self._client = SecAggClient(client_id, config, signing_key=signing_key, directory=directory)
        self._config = config
        self._frac_bits = frac_bits
        self._bound = bound
        self._coding = coding
        self._arena = arena
        self._input: np.ndarray | None = None
        self._message: bytearray | memoryview | None = None  # the message _input is in
        self._finished = False

    def start(self, contribution: torch.Tensor) -> bytes:
        dtype = self._config.dtype
        if self._coding is not None:  # integer codes on the round's shared grid
            try:
                codes, _ = self._coding[0].encode(contribution, self._coding[1])
            except DataError as error:
                raise DataError(f"client {self._client.client_id}: {error}") from error
            self._input = codes.astype(dtype)
            return self._client.advertise_keys()
        # Encoded into the message that will carry it, where it is masked in place: the
        # vector is written once and never copied on this side.
        buffer = MaskedInput.buffer(contribution.numel() + 1, dtype, self._arena)
        if buffer is None:
            self._input = np.empty(contribution.numel() + 1, dtype=dtype)
        else:
            self._message, self._input = buffer
        try:
            _, clamped = encode(
                contribution,
                frac_bits=self._frac_bits,
                bound=self._bound,
                dtype=dtype,
                out=self._input[:-1],
            )
        except DataError as error:
            raise DataError(f"client {self._client.client_id}: {error}") from error
        # Capped like every other value, so that the ring holds the sum of the counts too.
        self._input[-1] = min(clamped, encoded_bound(self._bound, self._frac_bits))
        return self._client.advertise_keys()

    def step(self, phase: str, data: bytes) -> bytes | bytearray | memoryview:
        if phase not in PHASE_STEPS:
            raise ProtocolError(f"client {self._client.client_id}: no secure phase {phase!r}")
        method = getattr(self._client, PHASE_STEPS[phase])
        if phase == "masked_input":  # the input is needed no more: mask it in place
            message, self._message = self._message, None
            return method(data, self._input, overwrite=True, message=message)
        reply = method(data)
        self._finished = phase == "unmasking"
        return reply

    @property
    def finished(self) -> bool:
        return self._finished


def grid_coding(
    config: Mapping[str, Any], client_id: int
) -> tuple[GridCoding, torch.Generator] | None:
    """The round's shared grid and this client's rounding generator, when the task says
    that clients send a compressor's integer codes (``code_bits``); else None."""
    if "code_bits" not in config:
        return None
    seed = config["rotation_seed"]
    grid = GridCoding(
        int(config["code_bits"]),
        float(config["radius"]),
        int(config["dimension"]),
        None if seed is None else int(seed),
        int(config["max_weight"]),
    )
    # The rounding's randomness, seeded per client and round like every compressor's
    # (runs repeat); the server learns the codes only as a sum.
    return grid, torch_generator(int(config["code_seed"]), client_id)


def check_round_parameters(
    protocol: SecAggConfig, *, variant: str, tolerated_dropout: float, corruption_rate: float
) -> None:
    """Refuse a round whose threshold, corruption count or degree differ from what this
    client's own options give for its number of clients: a server that sent a lower
    threshold could rebuild a client's secrets from fewer shares.

    :raises ProtocolError: naming the server's settings and the client's own.
    """
    n, dropped, corrupt = protocol.num_clients, tolerated_dropout, corruption_rate
    if variant == "secagg+":
        degree, threshold = secagg_plus_parameters(n, dropout_rate=dropped, corruption_rate=corrupt)
    else:
        threshold = secagg_threshold(n, dropout_rate=dropped, corruption_rate=corrupt)
        degree = n - 1
    degrees = {len(protocol.neighbours_of(u)) for u in protocol.client_ids}
    expected = (threshold, math.floor(corrupt * n + 1e-9), {min(degree, n - 1)})
    if (protocol.threshold, protocol.corrupted, degrees) != expected:
        raise ProtocolError(
            f"the server's round config has threshold {protocol.threshold}, "
            f"{protocol.corrupted} corrupted clients and degrees {sorted(degrees)}; this "
            f"client's options give {expected[0]}, {expected[1]} and {degree} for {n} "
            "clients: refusing"
        )
