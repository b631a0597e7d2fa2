"""Stacks of compressors: a sparsifier, then a coder of the values it keeps.

The one stack that makes sense, and the one the literature uses, sends where the kept
coordinates are as the sparsifier does and codes their values with a quantizer:

- Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016, "Federated Learning:
  Strategies for Improving Communication Efficiency" (Section 3, sketched updates):
  random subsampling, then probabilistic quantization of the kept values, optionally
  after a structured random rotation (``["random-mask", "qsgd"]``, with qsgd's
  ``rotation``).
- Basu, Data, Karakus, Diggavi 2019, "Qsparse-local-SGD: Distributed SGD with
  Quantization, Sparsification, and Local Computations" (NeurIPS): top-k, then QSGD
  of the k values, with error feedback (``["topk", "qsgd"]``).

A stack is spelt as a list of names (``compressor = ["random-mask", "qsgd"]`` in a
config file, ``--compressor random-mask,qsgd`` on the command line); each stage takes
its options from its own table, as it does alone. Only a :class:`Sparsifier` followed
by a :class:`ValueCoder` is accepted (:func:`check_stack`).

**Bytes**: the sparsifier's structure (``random-mask``: the uint64 seed of the mask;
``topk``: uint32 ``k``, uint32 length of the index set, the index set), then the
coder's bytes for the kept values as a vector of their count (``qsgd``: float32 scale,
packed codes). The count is not sent again: the structure fixes it (``k``, or the
mask that the seed draws, whose size varies from client to client).

**Error feedback**: with a sparsifier that keeps a residual (``topk``), the residual
is ``update + old residual - decode(bytes)``, where ``decode`` is the stack's server
half: it carries the quantizer's error as well as the dropped coordinates (Basu et
al.'s Algorithm 1 keeps ``x - QTopk(x)`` in the same way). Where the coder states a
variance bound ``beta`` (``E||Q(v) - v||^2 <= beta ||v||^2``; QSGD's norm scale:
Alistarh et al.'s Lemma 3.1), the stack decodes the values divided by ``1 + beta``, as
Basu et al. scale their composed operator so that it contracts: without it, error
feedback with a quantizer noisier than the update itself diverges (top-k of 5% of the
2NN, then 4-bit QSGD: ``beta = 14``, and the residuals grew to NaN within 10 rounds).

**Unbiasedness**: random-mask scaled by one over its rate is unbiased, and so is QSGD
of the kept values given the mask (its randomness is drawn after the mask), so the
stack's estimate is unbiased: ``E[decode] = E_mask[E_qsgd[...]] = update``.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard, cast

import torch

from privfl.algorithms.compression import corrected_rows, densify, sparse_error_feedback
from privfl.compressors import Compressor, StackedCompressor
from privfl.errors import ConfigError

SHAPES = "one compressor, or a sparsifier then a value coder"
"""The stacks :func:`check_stack` accepts, in words."""
KEPT_CODERS = 16
"""Copies of a value coder for other lengths that :meth:`ValueCoder.with_dimension`
keeps."""
_NO_VALUES = torch.zeros(0)
"""What :meth:`ValueCoder.encode_values` decodes from an empty vector (shared: it is
never changed)."""


class Kept(NamedTuple):
    """What a :class:`Sparsifier` keeps of one update."""

    structure: bytes
    """The bytes that say which coordinates are kept."""
    indices: torch.Tensor
    """The kept coordinates, sorted (int64): what
    :meth:`~Sparsifier.read_structure` reads back from :attr:`structure`."""
    values: torch.Tensor
    """The float32 values at them, as the server should receive them (random-mask's
    scaled by one over its rate)."""


class Sparsifier(Compressor):
    """A compressor that sends some of an update's coordinates: where they are (its
    *structure*) and their values. In a stack its values go to a :class:`ValueCoder`
    instead of its own value format."""

    error_feedback: bool = False
    """True when each client keeps what was not sent as a residual; in a stack the
    residual is the update less what the server decodes from the stack's bytes."""

    value_bits: int = 32
    """The width its values travel in when it is used alone; a stack refuses any but
    32, since there its value coder codes the values."""

    @abstractmethod
    def split_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
    ) -> list[Kept]:
        """Client half: what is kept of each row of ``updates`` (``[n_clients, dim]``).
        Row ``k`` draws only from ``generators[k]``, and draws what it would alone.
        Keeps no state: the stack does error feedback."""

    @abstractmethod
    def read_structure(self, data: bytes, *, config: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """Server half: the sorted kept coordinates (int64) that the structure at the
        start of ``data`` names, and the structure's length in bytes.

        :raises ValueError: when ``data`` does not start with a structure of this
            sparsifier.
        """


class ValueCoder(Compressor):
    """A compressor that codes a flat vector of any length, such as a sparsifier's kept
    values: its :meth:`~privfl.Compressor.encode_all` and
    :meth:`~privfl.Compressor.decode` depend on the length only through
    :meth:`~privfl.Compressor.setup`'s ``dimension``, and it keeps no state between
    rounds."""

    def encode_values(
        self,
        values: Sequence[torch.Tensor],
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        decoded: bool = False,
    ) -> tuple[list[bytes], list[torch.Tensor]]:
        """Client half: the bytes of each vector of ``values`` (their lengths may
        differ), those :meth:`~privfl.Compressor.encode_all` gives it with this coder
        set up for its length, and where ``decoded`` asks, the values the server will
        decode from each (:meth:`decode_values`; an empty list otherwise). Vectors of
        one length are coded together (:meth:`encode_rows`). No bytes for an empty
        vector."""
        encoded = [b""] * len(values)
        sent = [_NO_VALUES] * len(values) if decoded else []
        by_length: dict[int, list[int]] = {}
        for position, row in enumerate(values):
            by_length.setdefault(len(row), []).append(position)
        for length, positions in by_length.items():
            if length == 0:
                continue
            rows = (  # one vector of its length: a view, not a copy
                values[positions[0]][None]
                if len(positions) == 1
                else torch.stack([values[p] for p in positions])
            )
            datas, rows_sent = self.with_dimension(length).encode_rows(
                rows,
                config=config,
                generators=[generators[p] for p in positions],
                decoded=decoded,
            )
            for position, data in zip(positions, datas, strict=True):
                encoded[position] = data
            if rows_sent is not None:
                for position, row_sent in zip(positions, rows_sent, strict=True):
                    sent[position] = row_sent
        return encoded, sent

    def encode_rows(
        self,
        rows: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        decoded: bool,
    ) -> tuple[list[bytes], torch.Tensor | None]:
        """Client half for vectors of this coder's ``dimension`` (``rows``, ``[n,
        dimension]``): each one's bytes (:meth:`~privfl.Compressor.encode_all`), and
        where ``decoded`` asks, the ``[n, dimension]`` values the server will decode from
        them, bit for bit. The default decodes each one's bytes; a coder that knows
        them as it encodes (``qsgd``) overrides this to skip the second pass."""
        datas = self.encode_all(
            rows, config=config, generators=generators, states=[{} for _ in generators]
        )
        if not decoded:
            return datas, None
        return datas, torch.stack([self.decode(data, config=config) for data in datas])

    def decode_values(self, data: bytes, *, count: int, config: Mapping[str, Any]) -> torch.Tensor:
        """Server half: the ``count`` float32 values that ``data`` codes.

        :raises ValueError: when ``data`` is not this coder's encoding of ``count`` values.
        """
        if count == 0:
            if data:
                raise ValueError(f"{len(data)} bytes of values where none were kept")
            return torch.zeros(0)
        return self.with_dimension(count).decode(data, config=config)

    def variance_bound(self, count: int) -> float | None:
        """A ``beta`` with ``E||decoded - v||^2 <= beta ||v||^2`` for every vector ``v``
        of ``count`` values, where the coder states one; default: None. With error
        feedback a stack divides the decoded values by ``1 + beta``, as Basu et al. 2019
        scale their composed operator."""
        return None

    def with_dimension(self, dimension: int) -> ValueCoder:
        """A copy of this coder set up for vectors of ``dimension`` coordinates, kept
        for the next call with the same length and root seed (a copy took 0.005-0.014
        ms, as much as coding a client's kept values; at most ``KEPT_CODERS`` are
        kept, since a random mask's length differs client by client). Like this coder
        itself, a copy is shared by every thread that codes with it: coding changes
        nothing in it."""
        key = (dimension, self.seed)
        coders = self.__dict__.setdefault("_coders", {})
        coder = coders.get(key)
        if coder is None:
            coder = copy.copy(self)
            coder.setup(dimension=dimension, seed=self.seed)
            if len(coders) >= KEPT_CODERS:
                coders.clear()
            coders[key] = coder
        return cast(ValueCoder, coder)


class CompressorStack(StackedCompressor):
    """A :class:`Sparsifier` then a :class:`ValueCoder`, as one compressor: its bytes
    are the structure, then the coded values (see the module's docstring)."""

    def __init__(self, sparsifier: Sparsifier, coder: ValueCoder) -> None:
        check_stack([sparsifier.name, coder.name], [type(sparsifier), type(coder)])
        if sparsifier.value_bits != 32:
            raise ConfigError(
                f"{sparsifier.name}.value_bits",
                sparsifier.value_bits,
                f"32 (the default) in a stack: {coder.name} codes the values",
            )
        if coder.keeps_state:
            raise ConfigError(
                "compressor", coder.name, "a value coder that keeps no state between rounds"
            )
        self.sparsifier, self.coder = sparsifier, coder
        # The stack is built from its stages, not registered, so its name is its own.
        setattr(self, "name", f"{sparsifier.name},{coder.name}")  # noqa: B010

    def setup(self, *, dimension: int, seed: int, shapes: Sequence[Sequence[int]] = ()) -> None:
        super().setup(dimension=dimension, seed=seed, shapes=shapes)
        self.sparsifier.setup(dimension=dimension, seed=seed, shapes=shapes)
        self.coder.setup(dimension=dimension, seed=seed)  # it codes a vector, not the model

    def client_config(self, *, round: int) -> dict[str, Any]:
        """Each stage's config, under its name."""
        return {
            stage.name: stage.client_config(round=round) for stage in (self.sparsifier, self.coder)
        }

    @property
    def keeps_state(self) -> bool:
        return self.sparsifier.error_feedback

    @property
    def keeps_norm_bound(self) -> bool:
        return self.sparsifier.keeps_norm_bound and self.coder.keeps_norm_bound

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        rows: list[torch.Tensor] = []
        corrected = updates
        if self.keeps_state:
            rows, corrected = corrected_rows(updates, [s.get("residual") for s in states])
        parts = self.sparsifier.split_all(
            corrected, config=_stage_config(config, self.sparsifier), generators=generators
        )
        coded, decoded = self.coder.encode_values(
            [kept.values for kept in parts],
            config=_stage_config(config, self.coder),
            generators=generators,
            decoded=self.keeps_state,
        )
        if self.keeps_state:  # what was not sent, and the quantizer's error, carry over
            for row, kept, values, state in zip(rows, parts, decoded, states, strict=True):
                sent = self._scaled(values)  # what decode puts at the kept coordinates
                state["residual"] = sparse_error_feedback(row, kept.indices, sent)
        return [kept.structure + data for kept, data in zip(parts, coded, strict=True)]

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        indices, length = self.sparsifier.read_structure(
            data, config=_stage_config(config, self.sparsifier)
        )
        values = self.coder.decode_values(
            data[length:], count=len(indices), config=_stage_config(config, self.coder)
        )
        return densify(indices.reshape(1, -1), self._scaled(values).reshape(1, -1), self.dimension)[
            0
        ]

    def _scaled(self, values: torch.Tensor) -> torch.Tensor:
        """The coder's decoded ``values`` as the stack decodes them: with error feedback,
        divided by ``1 + beta`` where the coder states a variance bound ``beta``."""
        beta = self.coder.variance_bound(len(values)) if self.keeps_state else None
        if beta is not None:  # Basu et al.'s scaling, so that error feedback contracts
            values = values / (1 + beta)
        return values


def compressor_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """The names of a ``compressor`` setting: a list of names, or one string of names
    separated by commas (``"random-mask,qsgd"``, as the command line spells it).

    :raises ConfigError: for an empty name or a list item that is not a string.
    """
    names = value.split(",") if isinstance(value, str) else value
    if isinstance(names, Sequence) and names and all(isinstance(n, str) for n in names):
        stripped = tuple(name.strip() for name in names)
        if all(stripped):
            return stripped
    raise ConfigError(
        "compressor",
        value,
        'a name, or names separated by commas or in a list, such as ["random-mask", "qsgd"]',
    )


def check_stack(
    names: Sequence[str], classes: Sequence[type], registered: Iterable[type] = ()
) -> None:
    """Refuse a list of compressors that is not one compressor, or a sparsifier then a
    value coder, naming the list and the shapes allowed (with the ``registered``
    compressor classes of each role, where given).

    :raises ConfigError: for any other shape.
    """
    if len(classes) == 1 or (
        len(classes) == 2 and issubclass(classes[0], Sparsifier) and _is_coder(classes[1])
    ):
        return
    known = list(registered)
    sparsifiers = sorted(cls.name for cls in known if issubclass(cls, Sparsifier))
    coders = sorted(cls.name for cls in known if _is_coder(cls))
    roles = (
        f" (sparsifiers: {', '.join(sparsifiers) or 'none'}; value coders: "
        f"{', '.join(coders) or 'none'})"
        if known
        else ""
    )
    raise ConfigError(
        "compressor",
        list(names),
        f'{SHAPES}{roles}, such as ["random-mask", "qsgd"] or ["topk", "qsgd"]',
    )


def stack_compressors(stages: Sequence[Compressor], registered: Iterable[type] = ()) -> Compressor:
    """The compressor that ``stages`` spell: the only one, or a :class:`CompressorStack`
    of a sparsifier and a value coder.

    :raises ConfigError: for any other shape (see :func:`check_stack`).
    """
    check_stack([stage.name for stage in stages], [type(s) for s in stages], registered)
    if len(stages) == 1:
        return stages[0]
    return CompressorStack(cast(Sparsifier, stages[0]), cast(ValueCoder, stages[1]))


def _is_coder(cls: type) -> TypeGuard[type[ValueCoder]]:
    return issubclass(cls, ValueCoder) and not issubclass(cls, Sparsifier)


def _stage_config(config: Mapping[str, Any], stage: Compressor) -> Mapping[str, Any]:
    """A stage's part of the stack's ``client_config``."""
    part = config.get(stage.name)
    if not isinstance(part, Mapping):
        raise ValueError(f"the compression config has no table for {stage.name}: {config!r}")
    return part
