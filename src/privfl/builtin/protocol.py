"""Built-in round protocol: the server half's steps of a round.

The steps are those listed in :func:`privfl.hookspecs.privfl_round_protocol`.

Everything the server learns about a client arrives as a message through the
federation's executor: a ``train`` task goes out, an ``update`` (or, under secure
aggregation, the first protocol message) comes back, and secure aggregation's
phases are further exchanges. It is registered ``trylast`` so that a plugin's own
protocol, if any, runs instead.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from privfl.errors import RoundAborted
from privfl.messages import (
    Failure,
    Message,
    MessageError,
    bytes_tensor,
    check_finite,
    pack_configs,
    tensor_bytes,
)
from privfl.plugins import hookimpl
from privfl.records import ClientResult, RoundRecord
from privfl.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class _Report:
    """What a secure-sum client says in the open with its first protocol message."""

    client_id: int
    num_examples: int
    train_loss: float
    statistic_names: tuple[str, ...]


@dataclass
class _Replies:
    """A round's replies to its tasks, sorted by what they hold."""

    updates: list[ClientResult] = field(default_factory=list)
    """Plaintext updates (no secure aggregation)."""
    first: dict[int, bytes] = field(default_factory=dict)
    """Each client's first secure-sum message (secure aggregation)."""
    reports: dict[int, _Report] = field(default_factory=dict)
    """What secure-sum clients said in the open."""
    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    uplink_bytes: list[int] = field(default_factory=list)
    """The length of each compressed update received (with a compressor)."""
    encode_seconds: float = 0.0
    """What the clients report their compressor's encoding took, summed."""
    decode_seconds: float = 0.0


@hookimpl(trylast=True)
def privfl_round_protocol(federation, round: int) -> RoundRecord:
    fed = federation
    started = time.perf_counter()
    # 1. sample
    sampled = fed.sampler.sample(
        num_clients=fed.num_clients, generator=torch_generator(fed.seed, "sample", round)
    )
    client_ids = sampled.tolist()
    # 2. tasks out, replies in: local training and client halves run where clients run.
    # Simulated stragglers miss the round's deadline: they are told of the round but
    # never answer, so they count as dropped (secure aggregation's first phase too).
    late = fed.sampler.stragglers(
        sampled, num_clients=fed.num_clients, seed=fed.seed, round=round
    ).tolist()
    answers, downlink = (
        _train(fed, round, client_ids, set(late)) if len(late) < len(client_ids) else ({}, 0)
    )
    replies = _read_replies(fed, answers, round)
    values: dict[str, Any] = {"failed": replies.failed} if replies.failed else {}
    if downlink:
        values["downlink_bytes"] = downlink
    if replies.uplink_bytes:
        values["uplink_bytes"] = sum(replies.uplink_bytes) / len(replies.uplink_bytes)
        values["encode_seconds"] = replies.encode_seconds
        values["decode_seconds"] = replies.decode_seconds
    if late:
        values["stragglers"] = late
    # 3. simulated attack on the updates (simulation only: it needs the benign updates)
    if fed.attack is not None:
        values["malicious"] = [c for c in client_ids if c in fed.malicious]
        _poison(fed, replies.updates, round)
    # 4. screening of the updates the server sees
    accepted: list[ClientResult] = []
    with _one_thread():
        for result in replies.updates:
            reason = fed.hook.privfl_update_received(federation=fed, round=round, result=result)
            if reason is None:
                accepted.append(result)
            else:
                replies.rejected[result.client_id] = reason
    counted: list[ClientResult | _Report] = []
    if accepted or replies.first:
        try:
            # 5. aggregation (a secure sum's phases are exchanged here)
            aggregate, contributors, statistics = _aggregate(
                fed, accepted, replies, client_ids, round, values
            )
        except RoundAborted as exc:
            values["aborted"] = str(exc)
        else:
            # 6. server halves of the mechanisms
            for position, mechanism in enumerate(fed.mechanisms):
                aggregate, mechanism_values = mechanism.server_step(
                    aggregate,
                    expected_clients=fed.expected_clients,
                    contributors=len(contributors),
                    statistics=statistics,
                    generator=torch_generator(fed.seed, "server-mechanism", round, position),
                )
                values.update(mechanism_values)
            # 7. server update (a few element-wise operations on one vector)
            with _one_thread():
                fed.params = fed.server_optimizer.step(fed.params, aggregate)
            seen: list[ClientResult | _Report] = [*accepted, *replies.reports.values()]
            counted = [r for r in seen if r.client_id in contributors]
    # 8. evaluation
    metrics = fed.evaluate(final=round == fed.total_rounds) if fed.is_eval_round(round) else {}
    # 9. the record
    num_examples = sum(r.num_examples for r in counted)
    train_loss = (
        sum(r.train_loss * r.num_examples for r in counted) / num_examples
        if num_examples
        else float("nan")
    )
    return RoundRecord(
        round=round,
        clients=client_ids,
        num_examples=num_examples,
        train_loss=train_loss,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        rejected=replies.rejected,
        values=values,
    )


def _poison(fed, results: list[ClientResult], round: int) -> None:
    """Step 3: the attack replaces the malicious clients' updates, knowing the benign ones."""
    malicious = [r for r in results if r.client_id in fed.malicious]
    if not malicious:
        return
    benign = [r.update for r in results if r.client_id not in fed.malicious]
    poisoned = fed.attack.poison_updates(
        torch.stack([r.update for r in malicious]),
        torch.stack(benign) if benign else fed.params.new_empty((0, fed.params.numel())),
        generator=torch_generator(fed.seed, "attack", round),
    )
    for result, update in zip(malicious, poisoned, strict=True):
        result.update = update


def _tasks(fed, round: int, client_ids: list[int]) -> dict[int, Message]:
    """Step 2's ``train`` messages: the global parameters (float32 ``params``, or with
    downlink compression the round's ``encoded_params``, the same for every client, and
    their ``downlink`` config), seeds and mechanism configs."""
    configs, tensors = pack_configs(
        [m.client_config(round=round, client_ids=client_ids) for m in fed.mechanisms]
    )
    common: dict[str, Any] = {"round": round, "config": configs}
    if fed.compressor is not None:
        common["compression"] = fed.compressor.client_config(round=round)
    if fed.secure_position is not None:
        common["secure"] = fed.secure_position
        common["weighting"] = "unit" if fed.fixed_denominator else fed.aggregator.weighting
    if fed.downlink is None:
        tensors = {"params": fed.params, **tensors}
    else:
        common["downlink"], encoded = fed.downlink.encode(fed.params, round=round)
        tensors = {"encoded_params": bytes_tensor(encoded), **tensors}
    return {
        c: Message("train", {**common, "seed": derive_seed(fed.seed, "client", round, c)}, tensors)
        for c in client_ids
    }


def _train(
    fed, round: int, client_ids: list[int], late: set[int]
) -> tuple[dict[int, Message | Failure], int]:
    """Step 2's exchange with the clients not ``late``, telling the
    ``privfl_round_progress`` hook of each reply; returns the replies and the bytes of
    the global model each client was sent (``downlink_bytes``)."""
    tasks = {c: task for c, task in _tasks(fed, round, client_ids).items() if c not in late}
    model = next(iter(tasks.values())).tensors
    sent = model["encoded_params"] if fed.downlink is not None else model["params"]
    downlink = sent.numel() * sent.element_size()
    done = 0

    def replied(client: int) -> None:
        nonlocal done
        done += 1
        fed.hook.privfl_round_progress(federation=fed, round=round, done=done, total=len(tasks))

    fed.executor.on_reply = replied
    try:
        return fed.executor.send_and_receive(tasks), downlink
    finally:
        fed.executor.on_reply = None


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run vector work on one torch thread: decoding, screening and the server update are
    a few memory-bound operations on one vector at a time, where a second thread only
    adds overhead (5-25x under contention: a 199,210-value sum took 0.45 ms on one
    thread and 2.4-11 ms on two at load 10; see privfl.builtin.executors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read_replies(fed, answers: Mapping[int, Message | Failure], round: int) -> _Replies:
    """Check each reply and sort it. A malformed reply rejects its client, with the
    reason, and the round goes on with the others."""
    replies = _Replies()
    compression = fed.compressor.client_config(round=round) if fed.compressor else {}
    with _one_thread():
        for client, reply in answers.items():
            if isinstance(reply, Failure):
                replies.failed[str(client)] = reply.reason
                continue
            try:
                _read_reply(fed, client, reply, replies, compression)
            except MessageError as error:
                replies.rejected[client] = str(error)
    if replies.reports:  # every secure-sum contribution must have the same layout
        layouts = Counter(r.statistic_names for r in replies.reports.values())
        usual = layouts.most_common(1)[0][0]
        for client, report in list(replies.reports.items()):
            if report.statistic_names != usual:
                replies.rejected[client] = (
                    f"client {client} reported statistics {list(report.statistic_names)}, "
                    f"not {list(usual)} as the others"
                )
                del replies.reports[client], replies.first[client]
    return replies


def _read_reply(
    fed, client: int, reply: Message, replies: _Replies, compression: Mapping[str, Any]
) -> None:
    sender = f"client {client}"
    if reply.kind == "refused":
        replies.rejected[client] = str(reply.value("reason", sender))
        return
    expected = "secure-reply" if fed.secure_position is not None else "update"
    if reply.kind != expected:
        raise MessageError(f"{sender} answered its task with {reply.kind!r}, not {expected!r}")
    num_examples = reply.value("num_examples", sender)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise MessageError(f"{sender} sent num_examples = {num_examples!r}, not a count >= 1")
    loss = reply.value("train_loss", sender)
    train_loss = float("nan") if loss is None else check_finite(loss, "train_loss", sender)
    if expected == "update":
        stats = reply.value("statistics", sender)
        if not isinstance(stats, dict):
            raise MessageError(f"{sender} sent statistics that are not a table")
        statistics = {k: check_finite(v, k, sender) for k, v in stats.items()}
        if fed.compressor is None:
            update = reply.tensor("update", sender)
        else:
            update = _decode(fed, reply, replies, compression, sender)
        replies.updates.append(ClientResult(client, update, num_examples, train_loss, statistics))
        return
    names = reply.value("statistic_names", sender)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MessageError(f"{sender} sent statistic names that are not a list of names")
    replies.first[client] = tensor_bytes(reply.tensor("data", sender))
    replies.reports[client] = _Report(client, num_examples, train_loss, tuple(sorted(names)))


def _decode(
    fed, reply: Message, replies: _Replies, compression: Mapping[str, Any], sender: str
) -> torch.Tensor:
    """The update of a compressed reply, decoded by the server half; counts its bytes."""
    data = tensor_bytes(reply.tensor("encoded", sender))
    started = time.perf_counter()
    try:
        update = fed.compressor.decode(data, config=compression)
    except ValueError as error:
        raise MessageError(
            f"{sender} sent an update {fed.compressor.name} cannot decode: {error}"
        ) from None
    replies.decode_seconds += time.perf_counter() - started
    replies.encode_seconds += check_finite(
        reply.values.get("encode_seconds", 0.0), "encode_seconds", sender
    )
    replies.uplink_bytes.append(len(data))
    return update


def _stacked(rows: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(rows)``, without the copy when ``rows`` already are the consecutive
    rows of one matrix (the updates an in-process executor trained stacked): at 100
    clients of the 2NN that copy is 80 MB a round. The result is only read."""
    first = rows[0]
    dim, storage, offset = first.numel(), first.untyped_storage().data_ptr(), first.storage_offset()
    if all(
        row.dim() == 1
        and row.stride() == (1,)
        and row.dtype == first.dtype
        and row.untyped_storage().data_ptr() == storage
        and row.storage_offset() == offset + position * dim
        for position, row in enumerate(rows)
    ):
        return first.as_strided((len(rows), dim), (dim, 1))
    return torch.stack(rows)


def _aggregate(
    fed,
    accepted: list[ClientResult],
    replies: _Replies,
    client_ids: list[int],
    round: int,
    values: dict[str, Any],
) -> tuple[torch.Tensor, set[int], dict[str, float]]:
    """Step 5: return the aggregate, the ids it holds and the clients' mean statistics."""
    dim = fed.params.numel()
    if fed.secure_position is not None:
        names = list(next(iter(replies.reports.values())).statistic_names)
        summed = fed.mechanisms[fed.secure_position].secure_sum(
            round=round,
            client_ids=client_ids,
            first=replies.first,
            exchange=lambda phase, messages: _exchange(fed, phase, messages),
        )
        values.update(summed.values)
        total, contributors = summed.total, set(summed.contributors)
        if total.numel() != dim + len(names) + 1:
            raise MessageError(
                f"the secure sum has {total.numel()} values, not {dim + len(names) + 1}"
            )
    else:
        names = sorted(accepted[0].statistics)
        ids = [r.client_id for r in accepted]
        stats = torch.tensor([[r.statistics[n] for n in names] for r in accepted]).reshape(
            len(accepted), len(names)
        )
        updates = _stacked([r.update for r in accepted])
        if not fed.sums_only:
            needed = fed.aggregator.minimum_updates()
            if len(accepted) < needed:
                raise RoundAborted(
                    f"{len(accepted)} updates accepted; {fed.aggregator.name} needs at least "
                    f"{needed}"
                )
            weights = torch.tensor([r.num_examples for r in accepted], dtype=torch.float32)
            mean_stats = stats.mean(dim=0).tolist()
            aggregate = fed.aggregator.aggregate(updates, weights)
            return aggregate, set(ids), dict(zip(names, mean_stats, strict=True))
        # Weighted means from sums: columns [w_k * update_k, w_k * statistics_k, w_k].
        unit = fed.fixed_denominator or fed.aggregator.weighting == "unit"
        weights = torch.tensor([1.0 if unit else float(r.num_examples) for r in accepted])
        weights = weights.unsqueeze(1)
        contributions = torch.cat([updates * weights, stats * weights, weights], dim=1)
        total, contributors = contributions.sum(dim=0), set(ids)
    denominator = fed.expected_clients if fed.fixed_denominator else float(total[-1])
    aggregate = total[:dim] / denominator
    mean_stats = (total[dim : dim + len(names)] / denominator).tolist()
    return aggregate.to(fed.params.dtype), contributors, dict(zip(names, mean_stats, strict=True))


def _exchange(fed, phase: str, messages: Mapping[int, bytes]) -> dict[int, bytes]:
    """Send one secure-sum phase's messages; return the replies of that phase that came."""
    if not messages:
        return {}
    out = {
        c: Message("secure", {"phase": phase}, {"data": bytes_tensor(m)})
        for c, m in messages.items()
    }
    replies: dict[int, bytes] = {}
    for client, reply in fed.executor.send_and_receive(out).items():
        if isinstance(reply, Message) and reply.kind == "refused":
            # A client refuses a request only when the server deviated from the protocol
            # (a split or forbidden unmask request): no sound sum this round.
            reason = reply.values.get("reason")
            raise RoundAborted(f"client {client} refused the {phase!r} phase: {reason}")
        # A failed or malformed answer leaves the client out of the phase: the protocol
        # counts it as dropped there.
        if isinstance(reply, Message) and reply.kind == "secure-reply":
            data = reply.tensors.get("data")
            if (
                reply.values.get("phase") == phase
                and data is not None
                and data.dtype == torch.uint8
            ):
                replies[client] = tensor_bytes(data)
    return replies
