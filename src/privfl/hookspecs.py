"""The hooks that privfl calls, grouped by phase: this module is the plugin contract.

Every hook is an empty function whose docstring is its reference. Plugins implement a
hook by defining a function of the same name decorated with :data:`privfl.hookimpl`;
they may accept any subset of the hook's arguments (pluggy passes only the ones a
function names), so hooks can gain arguments without breaking plugins. All arguments
are keyword arguments.

Built-in behaviour lives in ordinary plugins (the modules listed in
:data:`privfl.plugins.BUILTIN_PLUGINS`), registered with the same call as third-party
plugins from the ``privfl`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from privfl.federation import Federation
    from privfl.records import ClientResult, RoundRecord

hookspec = pluggy.HookspecMarker("privfl")

# -------------------------------------------------------------------------
# Registration hooks: each returns component classes, collected by name.
# A class names itself with a ``name`` class attribute; two classes of one kind
# with the same name are a start-up error that names both plugins. The
# built-in components are listed in docs/reference/builtins.md, and
# `privfl plugins` lists every installed one with the plugin that registered it.
# -------------------------------------------------------------------------


@hookspec
def privfl_register_samplers() -> list[type]:
    """Return client sampler classes (subclasses of :class:`privfl.ClientSampler`).

    A sampler picks the ids of the clients that take part in a round.
    """


@hookspec
def privfl_register_aggregators() -> list[type]:
    """Return aggregator classes (subclasses of :class:`privfl.Aggregator`).

    An aggregator combines the stacked ``[n_clients, dim]`` updates of a round into
    one update.
    """


@hookspec
def privfl_register_server_optimizers() -> list[type]:
    """Return server optimizer classes (subclasses of :class:`privfl.ServerOptimizer`).

    A server optimizer applies the aggregated update to the global parameters.
    """


@hookspec
def privfl_register_mechanisms() -> list[type]:
    """Return privacy mechanism classes (subclasses of :class:`privfl.PrivacyMechanism`).

    A mechanism has a client half, which transforms each update where the client runs
    (clipping, noise, secure-aggregation masking), and a server half, which transforms
    the aggregate (central noise, accounting) or securely sums the contributions.
    """


@hookspec
def privfl_register_accountants() -> list[type]:
    """Return privacy accountant classes (subclasses of :class:`privfl.Accountant`).

    An accountant tracks the privacy that client-level DP spends round after round.
    """


@hookspec
def privfl_register_evaluators() -> list[type]:
    """Return evaluator classes (subclasses of :class:`privfl.Evaluator`).

    An evaluator scores global parameters on the test set and returns metrics.
    """


@hookspec
def privfl_register_executors() -> list[type]:
    """Return executor classes (subclasses of :class:`privfl.Executor`).

    An executor is the transport between the server half and the client halves: it
    makes clients reachable (in this process, in worker processes, on other machines)
    and delivers each round's messages to them.
    """


@hookspec
def privfl_register_datasets() -> list[type]:
    """Return dataset classes (subclasses of :class:`privfl.DatasetSource`).

    A dataset source loads train and test tensors by name for the command line.
    """


@hookspec
def privfl_register_models() -> list[type]:
    """Return model classes (:class:`torch.nn.Module` subclasses with a ``name``).

    The command line builds ``--model NAME`` by calling the class with no arguments.
    """


@hookspec
def privfl_register_partitioners() -> list[type]:
    """Return partitioner classes (subclasses of :class:`privfl.Partitioner`).

    A partitioner splits a dataset's examples among clients as index arrays.
    """


@hookspec
def privfl_register_compressors() -> list[type]:
    """Return update compressor classes (subclasses of :class:`privfl.Compressor`).

    A compressor has a client half, which encodes each update into the bytes that
    cross the message boundary after every mechanism's client step, and a server half,
    which decodes them before aggregation; the bytes are counted in each round's
    record (``uplink_bytes``).
    """


@hookspec
def privfl_register_attacks() -> list[type]:
    """Return attack classes (subclasses of :class:`privfl.Attack`).

    An attack says what simulated malicious clients do: poison their labels, or
    replace their updates.
    """


# -------------------------------------------------------------------------
# Initialization hooks: called once, before the first round.
# -------------------------------------------------------------------------


@hookspec
def privfl_configure(federation: Federation) -> None:
    """Check or adjust a federation once its components are built.

    Called before anything is trained or written. Raise :class:`privfl.ConfigError`
    to refuse a combination of components that cannot work together (for example an
    aggregator that needs individual updates behind secure aggregation).

    :param federation: The federation about to run.
    """


@hookspec
def privfl_session_start(federation: Federation, start_round: int, total_rounds: int) -> None:
    """Prepare for a session of rounds (open files, start progress bars).

    Called once per :meth:`privfl.Federation.run`, before its first round; a resumed
    run starts a new session at the round after its last checkpoint.

    :param federation: The federation that runs.
    :param start_round: The number of the first round of this session (1-based).
    :param total_rounds: The number of the last round that the session will run.
    """


# -------------------------------------------------------------------------
# Round hooks: called every round.
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def privfl_round_protocol(federation: Federation, round: int) -> RoundRecord | None:
    """Run one round and return its record.

    The built-in implementation is the server half of a round: it reaches clients only
    through ``federation.executor``'s messages, and runs these steps, in order:

    1. the sampler picks the round's client ids from a generator derived from
       (seed, round);
    2. each sampled client gets a ``train`` message (the global parameters, their
       bytes counted in the record's ``downlink_bytes``; its seed from (seed, round,
       client); every mechanism's ``client_config``); with downlink compression the
       parameters are encoded once for the round, the same bytes for every client,
       and the client half trains from the model it decodes. The client
       half, wherever the executor runs it, loads its own data, trains locally
       (malicious clients on labels poisoned by the attack, if any), computes
       ``update = local - global`` (a malicious client then takes the attack's
       ``craft_update`` instead) and applies every mechanism's ``client_step`` in
       order; it replies with the update (encoded by the federation's compressor, if
       any, and decoded by the server half on arrival, its bytes counted in the
       record's ``uplink_bytes``), or, under secure aggregation, keeps its
       weighted contribution secret and replies with the protocol's first message;
       an executor reports clients that did not reply as failures;
    3. with an attack, its ``poison_updates`` replaces the malicious clients'
       updates, knowing the benign ones (colluding attackers; simulation only, and
       refused behind secure aggregation, where the server sees no update);
    4. :func:`privfl_update_received` is called for each update the server sees;
       rejected updates are left out of aggregation and listed in the record's
       ``rejected``, with clients that refused the task;
    5. aggregation. Rules that look at every update (``works_on_secure_sum`` False)
       get the accepted updates stacked into ``[n_clients, dim]`` with their example
       counts. Weighted-mean rules are computed from sums of rows
       ``[w_k * update_k, w_k * statistics_k, w_k]``, where ``w_k`` is the example
       count, or 1 with a ``fixed_denominator`` mechanism (client-level DP) or an
       aggregator whose ``weighting`` is ``"unit"``; a ``sums_securely`` mechanism's
       ``secure_sum`` exchanges its protocol's phases with the clients through the
       executor and reveals only the sum (clients may drop out; too few left raises
       :class:`privfl.RoundAborted`, which ends the round with the global model
       unchanged and ``aborted`` in the record); the sum is divided by the sum of
       the weights received (or, with a fixed denominator, the expected number of
       clients);
    6. every privacy mechanism's ``server_step`` is applied to the aggregate, in
       order (central noise, clip-norm adaptation, accounting), and returns values
       for the record;
    7. the server optimizer applies the aggregate to the global parameters;
    8. if the round is an evaluation round, the evaluators score the new parameters
       (those marked ``final_only`` only after the last round);
    9. the record (clients, example counts and training loss of the clients in the
       aggregate, metrics, seconds, the malicious clients among the sampled ones,
       failed clients, the secure sum's cost and the values of step 6, such as
       ``epsilon``) is returned.

    Stops at first non-None result.

    :param federation: The federation that runs; its ``params`` are updated in place.
    :param round: The round number (1-based).
    :returns: The round's record.
    """


@hookspec(firstresult=True)
def privfl_update_received(federation: Federation, round: int, result: ClientResult) -> str | None:
    """Inspect a client's update when it reaches the server; return a reason to reject it.

    The built-in implementation rejects updates that hold NaN or infinite values or
    whose shape or dtype differs from the global parameters. A rejected update is left out of
    aggregation and the round goes on with the rest. Under secure aggregation the
    server sees no update, so this hook is not called; each client half checks its own
    update instead and refuses the round if it holds NaN or infinite values.

    Stops at first non-None result.

    :param federation: The federation that runs.
    :param round: The round number.
    :param result: The client's result: ``client_id``, ``update``, ``num_examples``.
    :returns: ``None`` to accept, or a short reason to reject.
    """


@hookspec
def privfl_round_progress(federation: Federation, round: int, done: int, total: int) -> None:
    """Report that ``done`` of the round's ``total`` clients have answered their task.

    Called by the built-in round protocol as replies arrive, when the executor
    reports them (see :attr:`privfl.Executor.on_reply`); the console reporter shows
    it as a progress bar within the round, since a CNN round can take minutes.

    :param federation: The federation that runs.
    :param round: The round number.
    :param done: Clients that have answered so far.
    :param total: Clients sampled for the round.
    """


@hookspec
def privfl_round_finish(federation: Federation, record: RoundRecord) -> None:
    """Record a finished round (history file, checkpoint, progress, table).

    Plugins may add entries to ``record.values`` before the built-in history writer
    runs (use ``tryfirst=True``).

    :param federation: The federation that runs, with the round's new parameters.
    :param record: The round's record.
    """


@hookspec(firstresult=True)
def privfl_should_stop(federation: Federation, record: RoundRecord) -> str | None:
    """Decide whether training stops after this round, and say why.

    Called after :func:`privfl_round_finish`. Used, for example, to stop before a
    privacy budget would be exceeded.

    Stops at first non-None result.

    :param federation: The federation that runs.
    :param record: The record of the round just finished.
    :returns: ``None`` to go on, or the reason to stop.
    """


@hookspec
def privfl_session_finish(federation: Federation, status: str, stop_reason: str | None) -> None:
    """Clean up after a session; always called, also when a round raised.

    :param federation: The federation that ran.
    :param status: ``"complete"`` (all rounds ran), ``"stopped"`` (a plugin asked to
        stop) or ``"failed"`` (an exception is propagating).
    :param stop_reason: Why the session stopped early, or ``None``.
    """
