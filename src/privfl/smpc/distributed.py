"""Encrypted evaluation by three processes: model owner, data owner and dealer.

Each party is one process and one rank of a torch.distributed group (gloo over TCP,
:mod:`privfl.smpc.channel`); each holds only its own secrets. The model owner (rank 0,
compute party 0) holds the weights, the data owner (rank 1, compute party 1) the images,
the dealer (rank 2) only its random streams. What each sends, in order:

1. setup: the model owner sends the model's structure (layer kinds and shapes, as JSON)
   and the settings to both others; the data owner sends the batch shapes. With
   :attr:`WireFormat.seeded_dealer` the dealer sends each compute party a ChaCha20 key;
   with :attr:`WireFormat.seeded_inputs` each owner sends the other compute party one.
2. input: each owner splits its secrets x into (x - r, r) and the other compute party
   gets r, or draws r from the key it was sent (weights once, images per batch).
3. weights, once: with :attr:`WireFormat.fixed_masks` the dealer fixes a Beaver mask b
   for each weight and the compute parties open f = W - b (:func:`fix_weight_masks`);
   every batch then opens only its own masked activations.
4. dealer, per batch: all three plan the batch's correlated randomness on meta tensors
   (:meth:`~privfl.smpc.session.Session.plan`); the dealer deals it
   (:mod:`privfl.smpc.dealer_streams`): with seeds only party 1's share of each
   dependent value travels, without them every share does.
5. online, per batch: both compute parties run :func:`shared_predictions` (the same
   protocol code as the one-process session) and open only masked values, exchanging
   shares; masked comparison bits travel packed with :attr:`WireFormat.packed_bits`.
6. output, per batch: party 0 sends its share of the predicted labels to the data owner,
   who alone learns them. Nothing else is opened to anyone.

Threat model as in :mod:`privfl.smpc`: semi-honest parties, no collusion, and a channel
that an outsider can neither read nor change (gloo does not encrypt: use a tunnel).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist
from torch import nn

from privfl.errors import ConfigError
from privfl.smpc import protocols
from privfl.smpc.channel import DATA_OWNER, DEALER, MODEL_OWNER, Channel, init_parties
from privfl.smpc.dealer import Request
from privfl.smpc.dealer_streams import Component, Draw, components, deal, party_shares
from privfl.smpc.inference import (
    SharedConv2d,
    SharedLayer,
    SharedLinear,
    SharedModel,
    secure_forward,
    share_model,
)
from privfl.smpc.parties import (
    PartySession,
    as_material,
    describe,
    map_tensors,
    own_share,
    skeleton,
)
from privfl.smpc.prg import ChaChaPRG
from privfl.smpc.protocols import FixedOperand
from privfl.smpc.ring_matmul import get_ring_matmul
from privfl.smpc.session import Session
from privfl.smpc.shared import SharedTensor, reconstruct

KEY_BYTES = 32


@dataclass(frozen=True)
class WireFormat:
    """What travels: each flag replaces bytes on the wire by local work.

    All on by default; turning them off sends every share, as the byte counts of the
    one-process session assume (useful to measure what each cut saves).
    """

    seeded_dealer: bool = True
    """Compute parties draw the dealer's free shares from keys agreed with the dealer."""
    seeded_inputs: bool = True
    """Each owner sends a key instead of the other compute party's input shares."""
    packed_bits: bool = True
    """Masked comparison bits and bit fields travel packed instead of one 64-bit word each."""
    fixed_masks: bool = True
    """Each weight's Beaver mask is fixed for the evaluation: its masked value is opened
    once, not once per batch."""


@dataclass
class PartyReport:
    """What one party ends with: its byte counts, timings and, for the data owner only,
    the predicted labels."""

    role: str
    images: int
    bytes: dict[str, dict[str, int]]
    opened: list[str] = field(default_factory=list)
    offline_s: float = 0.0
    online_s: float = 0.0
    predictions: torch.Tensor | None = None  # the data owner's; None for the others


def shared_predictions(session: Session, model: SharedModel, images: SharedTensor) -> SharedTensor:
    """Shared predicted label of every image: the secure forward pass, then a secure argmax."""
    one_hot = protocols.argmax_one_hot(session, secure_forward(session, model, images))
    classes = torch.arange(one_hot.shape[1], device=one_hot.shares.device)
    return one_hot.mul_public(classes).sum(dim=1)


def fix_weight_masks(session: Session, model: SharedModel) -> SharedModel:
    """``model`` with every weight's Beaver mask fixed for the rest of the session
    (:func:`privfl.smpc.protocols.fix_operand`, one opening of all weights' masked values);
    the weights are named by layer index, which the dealer keeps their masks under."""
    return _map_weights(model, lambda weight, name: protocols.fix_operand(session, weight, name))


def _map_weights(
    model: SharedModel, fn: Callable[[SharedTensor, str], SharedTensor]
) -> SharedModel:
    """``model`` with ``fn(weight, name)`` in place of each weight, named by layer index."""
    layers: list[SharedLayer] = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, SharedLinear):
            layer = replace(layer, weight_t=fn(layer.weight_t, f"layer{i}"))
        elif isinstance(layer, SharedConv2d):
            layer = replace(layer, weight=fn(layer.weight, f"layer{i}"))
        layers.append(layer)
    return SharedModel(tuple(layers))


def share_as_owner(
    secret: torch.Tensor, owner: int, stream: ChaChaPRG, channel: Channel, send: bool
) -> SharedTensor:
    """An owner's share of ring elements ``secret``; the peer's share r comes from ``stream``
    and is sent only if ``send`` (otherwise the peer draws it from the same key)."""
    theirs = stream.ring(secret.shape)
    if send:
        channel.send(theirs, 1 - owner)
    return own_share(secret - theirs, owner)


def receive_share(
    shape: torch.Size, owner: int, stream: ChaChaPRG | None, channel: Channel
) -> SharedTensor:
    """The other compute party's share of an owner's input: received, or drawn from the
    owner's key when ``stream`` is given."""
    mine = channel.recv(shape, owner) if stream is None else stream.ring(shape)
    return own_share(mine, 1 - owner)


def run_party(
    role: str,
    address: str,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    batch_size: int = 64,
    frac_bits: int = 16,
    wire: WireFormat | None = None,
    timeout_s: float = 300.0,
) -> PartyReport:
    """Join the three-party evaluation at ``address`` (HOST:PORT of the model owner) as
    ``role`` and run it to the end.

    The model owner passes ``model`` (a ``torch.nn.Sequential``), ``frac_bits`` and
    ``wire`` (it decides them for all); the data owner passes ``images`` (float, batch
    first) and ``batch_size``; the dealer passes nothing. Check the fixed-point headroom
    first (:func:`privfl.smpc.headroom.check_model_headroom` for the model owner,
    :func:`~privfl.smpc.headroom.check_inputs` for the data owner, against a public
    input bound), as ``privfl evaluate-party`` does: an overflow here is not detected.
    """
    if role == "model-owner" and not isinstance(model, nn.Sequential):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Sequential")
    if role == "data-owner" and (images is None or not images.is_floating_point()):
        raise ConfigError("images", images, "a float tensor of images, batch first")
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    rank = init_parties(address, role, timeout_s)  # checked before joining: peers would wait
    try:
        channel = Channel(rank)
        if rank == MODEL_OWNER:
            assert isinstance(model, nn.Sequential)
            return _model_owner(channel, model, frac_bits, wire or WireFormat())
        if rank == DATA_OWNER:
            assert images is not None
            return _data_owner(channel, images, batch_size)
        return _dealer(channel)
    finally:
        dist.destroy_process_group()


def _model_owner(
    channel: Channel, model: nn.Sequential, frac_bits: int, wire: WireFormat
) -> PartyReport:
    stacked = share_model(Session(frac_bits=frac_bits), model)  # shares discarded below
    settings = {"frac_bits": frac_bits, "wire": asdict(wire), "model": describe(stacked.to_meta())}
    for rank in (DATA_OWNER, DEALER):
        channel.send_json(settings, rank)
    batches = channel.recv_json(DATA_OWNER)
    session = PartySession(MODEL_OWNER, channel, frac_bits, pack_bits=wire.packed_bits)
    streams = _agree_keys(channel, MODEL_OWNER, wire)
    channel.phase = "input"
    shares = map_tensors(
        stacked,
        lambda x: share_as_owner(
            reconstruct(x), 0, streams["own"], channel, not wire.seeded_inputs
        ),
    )
    return _compute(session, "model-owner", shares, batches, streams, wire)


def _data_owner(channel: Channel, images: torch.Tensor, batch_size: int) -> PartyReport:
    settings = channel.recv_json(MODEL_OWNER)
    batches = [list(part.shape) for part in images.split(batch_size)]
    for rank in (MODEL_OWNER, DEALER):
        channel.send_json(batches, rank)
    wire = WireFormat(**settings["wire"])
    session = PartySession(DATA_OWNER, channel, settings["frac_bits"], pack_bits=wire.packed_bits)
    streams = _agree_keys(channel, DATA_OWNER, wire)
    channel.phase = "input"
    peer = streams.get("peer")
    shares = map_tensors(
        skeleton(settings["model"]), lambda x: receive_share(x.shape, 0, peer, channel)
    )
    encoded = session.encoder.encode(images)
    return _compute(session, "data-owner", shares, batches, streams, wire, encoded)


def _agree_keys(channel: Channel, party: int, wire: WireFormat) -> dict[str, ChaChaPRG]:
    """This compute party's streams: ``own`` (its input masks for the peer), ``peer``
    (the peer's masks for it, if seeded) and ``dealer`` (if seeded)."""
    own_key = os.urandom(KEY_BYTES)
    streams = {"own": ChaChaPRG.from_key(own_key)}
    if wire.seeded_inputs:  # party 0 sends first, party 1 receives first: no deadlock
        if party == MODEL_OWNER:
            channel.send_key(own_key, DATA_OWNER)
            streams["peer"] = ChaChaPRG.from_key(channel.recv_key(DATA_OWNER))
        else:
            streams["peer"] = ChaChaPRG.from_key(channel.recv_key(MODEL_OWNER))
            channel.send_key(own_key, MODEL_OWNER)
    if wire.seeded_dealer:
        streams["dealer"] = ChaChaPRG.from_key(channel.recv_key(DEALER))
    return streams


def _compute(
    session: PartySession,
    role: str,
    model: SharedModel,
    batches: list[list[int]],
    streams: dict[str, ChaChaPRG],
    wire: WireFormat,
    encoded_images: torch.Tensor | None = None,
) -> PartyReport:
    """Both compute parties: per batch, input shares, dealer material, online, output."""
    channel, party = session.channel, session.party
    predictions: list[torch.Tensor] = []
    offline_s = online_s = 0.0
    start_row = 0
    receive = _receiver(channel, wire.packed_bits)
    dealer_stream = streams.get("dealer")
    draw = receive if dealer_stream is None else _drawer(dealer_stream)

    def take_material(requests: list[Request]) -> None:
        for request in requests:
            shares = party_shares(request, party, draw, receive)
            session.dealer.put(request, as_material(request, party, shares))

    plans = _Plans(session)
    plans.warm_up(model, batches)
    if wire.fixed_masks:
        channel.phase = "dealer"
        start = time.perf_counter()
        take_material(session.plan(fix_weight_masks, model))
        offline_s += time.perf_counter() - start
        channel.phase = "online"
        start = time.perf_counter()
        model = fix_weight_masks(session, model)
        online_s += time.perf_counter() - start
    for shape in batches:
        channel.phase = "input"
        if party == DATA_OWNER:
            assert encoded_images is not None
            batch = encoded_images[start_row : start_row + shape[0]]
            images = share_as_owner(batch, 1, streams["own"], channel, not wire.seeded_inputs)
        else:
            images = receive_share(torch.Size(shape), 1, streams.get("peer"), channel)
        start_row += shape[0]
        channel.phase = "dealer"
        start = time.perf_counter()
        take_material(plans.get(tuple(shape), model, images))
        offline_s += time.perf_counter() - start
        channel.phase = "online"
        start = time.perf_counter()
        labels = shared_predictions(session, model, images)
        online_s += time.perf_counter() - start
        if session.dealer.pending():
            raise RuntimeError(
                f"{session.dealer.pending()} pieces of dealer material were not used"
            )
        channel.phase = "output"
        if party == MODEL_OWNER:
            session.send_output_share(labels)
        else:
            predictions.append(session.receive_output(labels))
    return PartyReport(
        role=role,
        images=start_row,
        bytes=channel.bytes_by_phase(),
        opened=[entry.kind.value for entry in session.log.entries],
        offline_s=offline_s,
        online_s=online_s,
        predictions=torch.cat(predictions) if predictions else None,
    )


def _dealer(channel: Channel) -> PartyReport:
    settings = channel.recv_json(MODEL_OWNER)
    batches = channel.recv_json(DATA_OWNER)
    wire = WireFormat(**settings["wire"])
    keys = [os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)]
    if wire.seeded_dealer:
        for party, key in enumerate(keys):
            channel.send_key(key, party)
    streams = [ChaChaPRG.from_key(key) for key in keys]
    model = skeleton(settings["model"])
    planner = Session(frac_bits=settings["frac_bits"])
    matmul = get_ring_matmul(planner.matmul_method)
    plans = _Plans(planner)
    plans.warm_up(model, batches)
    channel.phase = "dealer"
    start = time.perf_counter()
    fixed: dict[str, torch.Tensor] = {}  # the weights' masks, kept for the whole run

    def deal_and_send(requests: list[Request]) -> None:
        for request in requests:
            shares0, shares1 = deal(
                request, _drawer(streams[0]), _drawer(streams[1]), matmul, fixed
            )
            parts = components(request)
            if wire.seeded_dealer:
                for share, part in zip(shares1, parts, strict=True):
                    if part.dependent:
                        _send(channel, share, part, DATA_OWNER, wire.packed_bits)
                continue
            for party, shares in ((MODEL_OWNER, shares0), (DATA_OWNER, shares1)):
                for share, part in zip(shares, parts, strict=True):
                    if part.holder in (None, party):
                        _send(channel, share, part, party, wire.packed_bits)

    if wire.fixed_masks:
        deal_and_send(planner.plan(fix_weight_masks, model))
        model = _map_weights(model, lambda w, name: FixedOperand(w.shares, w.shares[0], name))
    for shape in batches:
        # once the previous batch's material is delivered (the compute parties start its
        # online phase), deal this batch's: dealing overlaps with their online work
        channel.flush()
        meta_images = SharedTensor(torch.empty(2, *shape, dtype=torch.int64, device="meta"))
        deal_and_send(plans.get(tuple(shape), model, meta_images))
    channel.flush()
    return PartyReport(
        role="dealer",
        images=sum(shape[0] for shape in batches),
        bytes=channel.bytes_by_phase(),
        offline_s=time.perf_counter() - start,
    )


class _Plans:
    """The dealer requests of one batch shape, planned on meta tensors once per shape
    (planning walks torch's meta kernels in Python and costs a fraction of a second)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._by_shape: dict[tuple[int, ...], list[Request]] = {}

    def get(
        self, shape: tuple[int, ...], model: SharedModel, images: SharedTensor
    ) -> list[Request]:
        """The requests of :func:`shared_predictions` on a batch of ``shape``."""
        if shape not in self._by_shape:
            self._by_shape[shape] = self._session.plan(shared_predictions, model, images)
        return self._by_shape[shape]

    def warm_up(self, model: SharedModel, batches: list[list[int]]) -> None:
        """Plan one image, untimed: the first use of torch's meta kernels imports modules
        (seconds on a busy machine), a start-up cost that is not the evaluation's."""
        if batches:
            parties = self._session.parties
            shape = (len(parties), 1, *batches[0][1:])
            meta = torch.empty(shape, dtype=torch.int64, device="meta")
            self._session.plan(shared_predictions, model, SharedTensor(meta, parties))


def _drawer(stream: ChaChaPRG) -> Draw:
    """Draw components from a stream agreed with the dealer (or the dealer's own)."""
    return lambda part: stream.fields(part.shape, 1 if part.kind == "bits" else part.width)


def _receiver(channel: Channel, packed_bits: bool) -> Draw:
    """Receive components from the dealer, bit fields packed if ``packed_bits``."""

    def receive(part: Component) -> torch.Tensor:
        if part.width < 64 and packed_bits:
            return channel.recv_fields(part.shape, part.width, DEALER)
        return channel.recv(part.shape, DEALER)

    return receive


def _send(
    channel: Channel, share: torch.Tensor, part: Component, party: int, packed_bits: bool
) -> None:
    """The dealer sends one share of one component to ``party``, without waiting for
    it to be delivered (the dealer deals the next batch meanwhile)."""
    if part.width < 64 and packed_bits:
        channel.send_fields(share, part.width, party, wait=False)
    else:
        channel.send(share, party, wait=False)
