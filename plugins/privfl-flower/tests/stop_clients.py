"""A test-only executor wrapper: some clients stop at a given phase of a given round.

privfl's in-process runs simulate dropouts with a seeded rate (``SecAgg(dropout=...)``),
which draws its own clients and phases. To compare a Flower run in which a SuperNode
stopped in the middle of a round with privfl's in-process run of the same data and
seed, the reference run must lose the same clients at the same point: this wrapper
around any executor answers every message to those clients, from that phase of that
round on, with the :class:`~privfl.messages.Failure` that the ``flower-grid`` executor
gives the clients of a node that left (``dropped``), and never delivers the messages
to their client halves. It lives with the tests, not in privfl: it is a way to
reproduce one deployment's event, not a feature.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from privfl.client_runtime import ClientApp
from privfl.components import Executor
from privfl.messages import Failure, Message


class StopClients(Executor):
    """Runs ``inner``, except that ``clients`` stop answering at ``phase`` of ``round``.

    :param inner: The executor that runs the client halves (``serial`` for the
        references of the tests).
    :param clients: The clients that stop (a SuperNode's).
    :param round: The round (from 1) in which they stop.
    :param phase: The secure-aggregation phase whose message they never answer, or
        ``"train"`` for the round's first message.
    :param reason: The failure they get from then on, in every later round too.
    """

    name = "stop-clients"  # never registered: tests build it directly

    def __init__(
        self,
        inner: Executor,
        *,
        clients: Collection[int],
        round: int,
        phase: str,
        reason: str = "dropped",
    ) -> None:
        self.inner = inner
        self.clients = frozenset(clients)
        self.round, self.phase, self.reason = round, phase, reason
        self.clients_in_process = inner.clients_in_process
        self._round = 0
        self.stopped = False

    def start(self, app: ClientApp) -> None:
        self.inner.start(app)

    def close(self) -> None:
        self.inner.close()

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        first = next(iter(messages.values()))
        if first.kind == "train":
            self._round = int(first.values["round"])
        phase = "train" if first.kind == "train" else str(first.values.get("phase", ""))
        if (self._round, phase) == (self.round, self.phase):
            self.stopped = True
        gone = self.clients if self.stopped else frozenset()
        delivered = {c: m for c, m in messages.items() if c not in gone}
        self.inner.on_reply = self.on_reply
        replies = self.inner.send_and_receive(delivered) if delivered else {}
        return {c: Failure(self.reason) if c in gone else replies[c] for c in messages}
