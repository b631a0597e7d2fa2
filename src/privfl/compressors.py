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

import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from privfl.components import Component, Executor
from privfl.errors import ConfigError
from privfl.mechanisms import PrivacyMechanism


class Compressor(Component):
    """Encodes a client's update into few bytes where the client runs; decodes on the server.

    :meth:`setup` runs on the server half before the first round, and the client half
    gets the instance as set up (in its :class:`~privfl.ClientApp`, also
    in worker processes); :meth:`~privfl.Compressor.client_config` says per round what
    every client needs (such as the seed of a shared rotation) and travels in the
    ``train`` message;
    :meth:`encode` runs in the client half and :meth:`decode` in the server half. The
    length of the encoded bytes is what a round records as ``uplink_bytes``.
    """

    dimension: int = 0
    """The length of an update, set by :meth:`setup`."""

    shapes: tuple[tuple[int, ...], ...] = ()
    """The shapes of the model's parameters, in the order the flat update holds them,
    set by :meth:`setup` (empty where the host does not give them)."""

    def setup(self, *, dimension: int, seed: int, shapes: Sequence[Sequence[int]] = ()) -> None:
        """Server half: remember the update length, the federation's root seed, and the
        model's parameter shapes (for a compressor that treats weight matrices as
        matrices, such as ``low-rank``; others ignore them)."""
        self.dimension = dimension
        self.seed = seed
        self.shapes = tuple(tuple(int(n) for n in shape) for shape in shapes)

    def client_config(self, *, round: int) -> dict[str, Any]:
        """Server half: JSON-safe values every client needs this round; default: none."""
        return {}

    @property
    def keeps_state(self) -> bool:
        """True when each client keeps state between rounds (error feedback's residual)."""
        return False

    sums_in_ring: bool = False
    """True when the clients' codes are integers on one grid that every client of a round
    shares, so that the sum of the codes is the code of the sum: secure aggregation can
    then add them in its ring (see :mod:`privfl.builtin.secure_quantizer`). Such a
    compressor also has ``coding(round=..., radius=...)``, which gives the round's
    :class:`~privfl.builtin.secure_quantizer.GridCoding`."""

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

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        """Client half for the clients of a stack: the bytes of each row of ``updates``
        (``[n_clients, dim]``), each exactly what :meth:`encode` gives that client alone,
        with its own ``generators[k]`` and ``states[k]``.

        Where clients train stacked in one process, this encodes them together; a
        compressor may override it with one stacked computation (the built-ins do, and
        their :meth:`encode` is this for one row). Default: :meth:`encode` row by row.
        A host may call it from several threads at once, for different clients.
        """
        return [
            self.encode(row, config=config, generator=generator, state=state)
            for row, generator, state in zip(updates, generators, states, strict=True)
        ]

    @abstractmethod
    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        """Server half: the flat float32 update that ``data`` stands for.

        :raises ValueError: when ``data`` is not an encoding of this compressor.
        """


class StackedCompressor(Compressor):
    """A compressor whose client half is written once, for a stack of clients: its
    :meth:`encode` is :meth:`encode_all` of one row, so a client's bytes are the same
    whether it is encoded alone or with others."""

    def encode(
        self,
        update: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generator: torch.Generator,
        state: dict[str, torch.Tensor],
    ) -> bytes:
        rows = update.reshape(1, -1)
        return self.encode_all(rows, config=config, generators=[generator], states=[state])[0]

    @abstractmethod
    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        """Client half: each row's bytes (see :meth:`privfl.Compressor.encode_all`)."""


ENCODE_PART = 262_144
"""Most coordinates that :func:`encode_stack` encodes in one call of
:meth:`~privfl.Compressor.encode_all` (1 MiB of float32)."""


def encode_stack(
    compressor: Compressor,
    updates: torch.Tensor,
    *,
    config: Mapping[str, Any],
    generators: Sequence[torch.Generator],
    states: Sequence[dict[str, torch.Tensor]],
    pool: ThreadPoolExecutor | None = None,
    threads: int = 1,
) -> tuple[list[bytes], float]:
    """Client half for a stack of clients trained together: each row's bytes (those
    the client would send alone, see :meth:`~privfl.Compressor.encode_all`), and the
    wall-clock seconds that encoding them all took.

    The stack is cut into consecutive parts of at most
    :data:`privfl.compressors.ENCODE_PART` coordinates (at least one client each).
    Where there is a ``pool`` of ``threads`` threads, the parts are dealt to one task
    per thread, each encoding its parts in turn: on the 2NN, one task per part (ten a
    round) took 5-10% longer, most of it handing tasks and the GIL between threads.
    Encoding makes several temporaries the size of its input, and a part runs fastest
    while they fit in a core's cache: on the 2NN (199,210 coordinates, 2 MiB of cache
    per core), encoding five clients one at a time took 0.7x the time of encoding them
    stacked with ``qsgd`` and ``topk``, and about the same with ``random-mask``.
    """

    def encode(bounds: tuple[int, int]) -> list[bytes]:
        start, end = bounds
        return compressor.encode_all(
            updates[start:end],
            config=config,
            generators=generators[start:end],
            states=states[start:end],
        )

    def encode_each(dealt: list[tuple[int, int]]) -> list[list[bytes]]:
        return [encode(part) for part in dealt]

    started = time.perf_counter()
    count, per_part = len(updates), max(1, ENCODE_PART // updates.shape[1])
    parts = [(start, min(start + per_part, count)) for start in range(0, count, per_part)]
    tasks = 1 if pool is None else min(threads, len(parts))
    if pool is None or tasks == 1:
        encoded = [data for part in parts for data in encode(part)]
    else:  # task t encodes parts t, t + tasks, ...: put back in order
        dealt = list(pool.map(encode_each, [parts[t::tasks] for t in range(tasks)]))
        encoded = [data for i in range(len(parts)) for data in dealt[i % tasks][i // tasks]]
    return encoded, time.perf_counter() - started


def check_compression(
    compressor: Compressor,
    mechanisms: Sequence[PrivacyMechanism],
    executor: Executor,
    secure_position: int | None,
) -> None:
    """Refuse combinations of a compressor with privacy mechanisms or an executor that
    would not keep their promises, naming the fix.

    - **Secure aggregation**: only a linear-compatible compressor
      (:attr:`~privfl.Compressor.sums_in_ring`: integer codes on a grid, and a rotation,
      shared by every client of the round), whose codes secure aggregation sums in its
      ring, and only with a mechanism that sums such codes
      (:attr:`~privfl.PrivacyMechanism.sums_codes`). Others are refused: their codes carry
      per-client norms, indices or seeds that do not add up across clients, and the
      server sees only the sum.
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
    secure = None if secure_position is None else mechanisms[secure_position]
    if secure is not None and compressor.sums_in_ring and not secure.sums_codes:
        raise ConfigError(
            "compressor",
            name,
            f"no compressor with {secure.name}: it sums the updates themselves, not "
            f"{name}'s integer codes (its sums_codes is false); drop the compressor or use "
            "secagg or secagg+",
        )
    if secure is not None and not compressor.sums_in_ring:
        raise ConfigError(
            "compressor",
            name,
            f"a linear-compatible compressor with {secure.name}, such as shared-grid: "
            "secure aggregation reveals only the sum of the clients' codes, and "
            f"{name}'s codes (per-client norms, indices, seeds) do not add up across "
            "clients; use --compressor shared-grid, or drop the compressor or the "
            "secure-aggregation mechanism",
        )
    for mechanism in mechanisms:
        noise_after = getattr(mechanism, "mode", "central") != "local"
        if mechanism.fixed_denominator and noise_after and not compressor.keeps_norm_bound:
            raise ConfigError(
                "compressor",
                name,
                f"a compressor that keeps the clip norm with {mechanism.name} (the accountant "
                f"assumes each client's contribution has norm at most the clip; {name}'s "
                "decoded update can exceed it): use topk with error_feedback = false, "
                "random-mask or low-rank with unbiased = false, or set the mechanism's mode = "
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
