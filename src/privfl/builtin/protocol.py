"""Built-in round protocol: the steps listed in :func:`privfl.hookspecs.privfl_round_protocol`.

It is registered ``trylast`` so that a plugin's own protocol, if any, runs instead.
"""

from __future__ import annotations

import time

import torch

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
    if accepted:
        # 5. aggregation over the stacked [n_clients, dim] updates
        updates = torch.stack([r.update for r in accepted])
        weights = torch.tensor([r.num_examples for r in accepted], dtype=torch.float32)
        aggregate = fed.aggregator.aggregate(updates, weights)
        # 6. server-side mechanisms
        for position, mechanism in enumerate(fed.mechanisms):
            aggregate = mechanism.server_step(
                aggregate,
                expected_clients=fed.expected_clients,
                generator=torch_generator(fed.seed, "server-mechanism", round, position),
            )
        # 7. server update
        fed.params = fed.server_optimizer.step(fed.params, aggregate)
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
        values={"malicious": [r.client_id for r in malicious]} if fed.attack else {},
    )
