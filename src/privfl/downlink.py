"""Downlink compression: the global model sent to the clients in few bits per coordinate.

Caldas, Konečný, McMahan, Talwalkar 2018, "Expanding the Reach of Federated Learning by
Reducing Client Resource Requirements": the server sends the clients a lossy
compression of the global model (a randomized Hadamard rotation, then probabilistic
quantization); each client trains from the model it decodes, and sends its update
relative to that model; the server keeps the exact model and applies the aggregate of
the updates to it. The quantization error is never compounded from round to round:
each round starts from the server's exact parameters.

privfl reuses the ``qsgd`` compressor (:class:`~privfl.builtin.compressors.QSGD`) for
this, with ``rotation = True`` and ``scale = "max"``: Suresh et al. 2017's stochastic
k-level quantization after a seeded random Hadamard rotation, in qsgd's byte format (a
float32 scale, then one ``bits``-bit code per coordinate of the rotated vector, padded
to a multiple of 64). The server encodes the model once per round, with randomness and
a rotation seeded by (seed, round), and every client of the round gets the same bytes,
so the model a client decodes is a function of (parameters, seed, round): a resumed
run gives the same bytes. :class:`DownlinkEncoder` is the server half,
:class:`DownlinkDecoder` the client half.

What a client decodes is only its starting point: its update is clipped and noised by
client-level DP, or summed by secure aggregation, as without downlink compression, so
the accountant's epsilon and what secure aggregation reveals (the sum alone) are
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from privfl.builtin.compressors import QSGD
from privfl.errors import ConfigError
from privfl.messages import MessageError
from privfl.seeding import derive_seed, torch_generator

BITS = range(2, 17)
"""The widths a downlink code may have (those of ``qsgd``)."""


def check_downlink_bits(bits: Any) -> int:
    """Return ``bits`` as the downlink's code width, 0 for float32 (``None`` or 0).

    :raises ConfigError: for anything else than unset, 0 or an integer from 2 to 16.
    """
    if bits is None:
        return 0
    if isinstance(bits, bool) or not isinstance(bits, int) or (bits != 0 and bits not in BITS):
        raise ConfigError(
            "downlink_bits",
            bits,
            "0 or unset (the global model travels as float32), or an integer from 2 to 16 "
            "(bits per coordinate of the model the clients receive)",
        )
    return bits


def _quantizer(bits: int, dimension: int, seed: int = 0) -> QSGD:
    quantizer = QSGD(bits=bits, rotation=True, scale="max")
    quantizer.setup(dimension=dimension, seed=seed)
    return quantizer


class DownlinkEncoder:
    """Server half: the bytes of each round's global model, the same for every client.

    :param bits: Bits per coordinate, 2 to 16.
    :param dimension: The number of parameters.
    :param seed: The federation's root seed; the rotation and the rounding draw from
        seeds derived from it and the round, apart from any update compressor's.
    """

    def __init__(self, bits: int, *, dimension: int, seed: int) -> None:
        if check_downlink_bits(bits) == 0:
            raise ConfigError("downlink_bits", bits, "an integer from 2 to 16 for an encoder")
        self.bits = bits
        self.seed = seed
        self._quantizer = _quantizer(bits, dimension, derive_seed(seed, "downlink"))

    def encode(self, params: torch.Tensor, *, round: int) -> tuple[dict[str, Any], bytes]:
        """The ``downlink`` config (JSON-safe: the bits and the rotation's seed) and the
        bytes that stand for ``params`` in round ``round``."""
        config = {"bits": self.bits, **self._quantizer.client_config(round=round)}
        data = self._quantizer.encode(
            params,
            config=config,
            generator=torch_generator(self.seed, "downlink", round),
            state={},
        )
        return config, data


class DownlinkDecoder:
    """Client half: the model that a round's downlink bytes stand for.

    Every client of a round receives the same bytes, so a host that answers many
    clients decodes them once: the last decoded model is kept and given again (the same
    tensor, which stacked training then recognises as a shared start).

    :param dimension: The number of parameters of the client's model.
    """

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._quantizers: dict[int, QSGD] = {}  # by bits
        self._last: tuple[bytes, dict[str, Any], torch.Tensor] | None = None

    def decode(self, data: bytes, config: Any, sender: str) -> torch.Tensor:
        """The float32 model of ``data`` under the round's ``config``.

        :raises MessageError: when ``config`` or ``data`` is not a downlink encoding,
            naming ``sender``.
        """
        if not isinstance(config, Mapping):
            raise MessageError(f"train message from {sender}: downlink config is not a table")
        config = dict(config)
        if self._last is not None and self._last[0] == data and self._last[1] == config:
            return self._last[2]
        bits = config.get("bits")
        try:
            if check_downlink_bits(bits) == 0:
                raise ConfigError("bits", bits, "an integer from 2 to 16")
            quantizer = self._quantizers.get(bits)
            if quantizer is None:
                quantizer = self._quantizers[bits] = _quantizer(bits, self.dimension)
            params = quantizer.decode(data, config=config)
        except (ConfigError, ValueError) as error:
            raise MessageError(
                f"train message from {sender}: a global model that does not decode: {error}"
            ) from None
        self._last = (data, config, params)
        return params
