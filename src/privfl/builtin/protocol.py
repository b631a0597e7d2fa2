"""Built-in round protocol: the steps listed in :func:`privfl.hookspecs.privfl_round_protocol`.

It is registered ``trylast`` so that a plugin's own protocol, if any, runs instead.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from privfl.errors import RoundAborted
from privfl.plugins import hookimpl
from privfl.records import ClientResult, ClientTask, RoundRecord
from privfl.seeding import derive_seed, torch_generator


@hookimpl(trylast=True)
def privfl_round_protocol(federation, round: int) -> RoundRecord:
    fed = federation
    started = time.perf_counter()
    # 1. sample
    client_ids = fed.sampler.sample(
        num_clients=fed.num_clients, generator=torch_generator(fed.seed, "sample", round)
    )
    tasks = [
        ClientTask(client_id=c, round=round, seed=derive_seed(fed.seed, "client", round, c))
        for c in client_ids.tolist()
    ]
    # 2. local training and client-side mechanisms, wherever the executor runs them
    results = fed.executor.run(fed.client_work, tasks, fed.params) if tasks else []
    # 3. simulated attack on the updates
    malicious = [r for r in results if r.client_id in fed.malicious]
    if malicious and fed.attack is not None:
        benign = [r.update for r in results if r.client_id not in fed.malicious]
        poisoned = fed.attack.poison_updates(
            torch.stack([r.update for r in malicious]),
            torch.stack(benign) if benign else fed.params.new_empty((0, fed.params.numel())),
            generator=torch_generator(fed.seed, "attack", round),
        )
        for result, update in zip(malicious, poisoned, strict=True):
            result.update = update
    # 4. screening
    accepted: list[ClientResult] = []
    rejected: dict[int, str] = {}
    for result in results:
        reason = fed.hook.privfl_update_received(federation=fed, round=round, result=result)
        if reason is None:
            accepted.append(result)
        else:
            rejected[result.client_id] = reason
    values: dict[str, Any] = {"malicious": [r.client_id for r in malicious]} if fed.attack else {}
    if accepted:
        try:
            # 5. aggregation
            aggregate, contributors, statistics = _aggregate(fed, accepted, round)
        except RoundAborted as exc:
            values["aborted"] = str(exc)
        else:
            # 6. server-side mechanisms
            for position, mechanism in enumerate(fed.mechanisms):
                aggregate = mechanism.server_step(
                    aggregate,
                    expected_clients=fed.expected_clients,
                    contributors=len(contributors),
                    statistics=statistics,
                    generator=torch_generator(fed.seed, "server-mechanism", round, position),
                )
            # 7. server update
            fed.params = fed.server_optimizer.step(fed.params, aggregate)
            accepted = [r for r in accepted if r.client_id in contributors]
    for mechanism in fed.mechanisms:
        values.update(mechanism.round_values())
    # 8. evaluation
    metrics = fed.evaluate(final=round == fed.total_rounds) if fed.is_eval_round(round) else {}
    # 9. the record
    num_examples = sum(r.num_examples for r in accepted)
    train_loss = (
        sum(r.train_loss * r.num_examples for r in accepted) / num_examples
        if num_examples
        else float("nan")
    )
    return RoundRecord(
        round=round,
        clients=[t.client_id for t in tasks],
        num_examples=num_examples,
        train_loss=train_loss,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        rejected=rejected,
        values=values,
    )


def _aggregate(
    fed, accepted: list[ClientResult], round: int
) -> tuple[torch.Tensor, set[int], dict[str, float]]:
    """Step 5: return the aggregate, the ids it holds and the clients' mean statistics."""
    names = sorted(accepted[0].statistics)
    ids = [r.client_id for r in accepted]
    stats = torch.tensor([[r.statistics[n] for n in names] for r in accepted]).reshape(
        len(accepted), len(names)
    )
    updates = torch.stack([r.update for r in accepted])
    if not fed.sums_only:
        weights = torch.tensor([r.num_examples for r in accepted], dtype=torch.float32)
        mean_stats = stats.mean(dim=0).tolist()
        aggregate = fed.aggregator.aggregate(updates, weights)
        return aggregate, set(ids), dict(zip(names, mean_stats, strict=True))
    # Weighted means from sums: columns [w_k * update_k, w_k * statistics_k, w_k].
    fixed = fed.fixed_denominator
    weights = torch.tensor(
        [1.0 if fixed else fed.aggregator.client_weight(r.num_examples) for r in accepted]
    ).unsqueeze(1)
    contributions = torch.cat([updates * weights, stats * weights, weights], dim=1)
    if fed.secure_mechanism is not None:
        summed = fed.secure_mechanism.secure_sum(contributions, client_ids=ids, round=round)
        total, contributors = summed.total, set(summed.contributors)
    else:
        total, contributors = contributions.sum(dim=0), set(ids)
    denominator = fed.expected_clients if fixed else float(total[-1])
    dim = updates.shape[1]
    aggregate = total[:dim] / denominator
    mean_stats = (total[dim : dim + len(names)] / denominator).tolist()
    return aggregate.to(updates.dtype), contributors, dict(zip(names, mean_stats, strict=True))
