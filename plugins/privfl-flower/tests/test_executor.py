"""The ``flower-grid`` executor and the handshake against an in-process Grid.

The Grid here delivers each Flower message at once to a node that is a privfl
ClientHost in this process, built from the owner's own folder, so these tests run
in seconds; the deployment tests run the same code on real SuperNodes.
"""

from __future__ import annotations

import subprocess
import sys

import privfl_flower
import pytest
import torch
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from privfl_flower import FlowerGridExecutor, NodeData, connect_nodes
from privfl_flower.client_app import owned_clients
from privfl_flower.wire import HELLO_ACTION, WireError, hello_reply, pack, unpack
from stop_clients import StopClients

import privfl
from privfl.builtin.executors import SerialExecutor
from privfl.client_data import FolderData, write_client_folders
from privfl.client_runtime import ClientHost
from privfl.data.partition import iid
from privfl.errors import ClientError
from privfl.messages import decode, encode
from privfl.testing import ClearSum, tiny_dataset, tiny_federation

NODES = {101: [0, 1], 202: [2, 3], 303: [4, 5]}  # Flower node id -> its privfl clients


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's messages need the identity of the process's task, as a ServerApp has."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id = TaskIdentity._task_id = TaskIdentity._node_id = None


@pytest.fixture
def folders(tmp_path):
    """Each node's own folder, holding its clients' files only."""
    train, _ = tiny_dataset(seed=0)
    partition = iid(len(train), 6, seed=0)
    out = {}
    for node, clients in NODES.items():
        source = write_client_folders(tmp_path / str(node), train, partition)
        for client in set(range(6)) - set(clients):
            source.path(client).unlink()
        out[node] = tmp_path / str(node)
    return out


class InProcessGrid(Grid):
    """A Grid whose nodes answer at once, in this process.

    :param folders: Node id -> the node's data folder.
    :param settings: The federation's settings, with which each node builds its
        client half as the app's builder would.
    :param fail: Node id -> a Flower error code its replies carry instead of answers.
    :param silent: Nodes that never answer.
    :param stop: (node, round, phase): from that phase of that round on, the node is
        unavailable, as a SuperNode stopped then is.
    """

    def __init__(self, folders, settings=None, fail=None, silent=(), stop=None):
        self.folders = folders
        self.settings = dict(settings or {})
        self.fail = dict(fail or {})
        self.silent = set(silent)
        self.stop = stop
        self.round = 0
        self.hosts: dict[int, ClientHost] = {}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def get_node_ids(self):
        return list(self.folders)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's grids do
            ids.append(message.metadata.message_id)
            self.sent.append(message)
            node = message.metadata.dst_node_id
            self._maybe_stop(node, message)
            if node in self.silent:
                continue
            if node in self.fail:
                error = Error(code=self.fail[node], reason="as the test asked")
                self.replies[ids[-1]] = Message(error, reply_to=message)
            else:
                self.replies[ids[-1]] = Message(self._answer(node, message), reply_to=message)
        return ids

    def _maybe_stop(self, node: int, message: Message) -> None:
        if self.stop is None or message.metadata.message_type == HELLO_ACTION:
            return
        _, bodies, fields = unpack(message.content, "the server")
        if fields["kind"] == "train":
            self.round = decode(bodies[0], sender="the server").values["round"]
        phase = fields["phase"] or fields["kind"]
        if (node, self.round, phase) == self.stop:
            self.fail[node] = ErrorCode.NODE_UNAVAILABLE

    def _answer(self, node: int, message: Message) -> RecordDict:
        if message.metadata.message_type == HELLO_ACTION:
            return hello_reply(owned_clients(self.folders[node]))
        clients, bodies, fields = unpack(message.content, "the server")
        if node not in self.hosts:
            fed = tiny_federation(
                train=None,
                partition=None,
                client_data=FolderData(self.folders[node], fields["num-clients"]),
                **self.settings,
            )
            self.hosts[node] = ClientHost(fed.client_app)
        replies = self.hosts[node].handle_all(
            {c: decode(b, sender="the server") for c, b in zip(clients, bodies, strict=True)}
        )
        return pack(list(replies), [encode(m) for m in replies.values()])

    def pull_messages(self, message_ids):
        return [self.replies[m] for m in message_ids if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("the executor pulls replies itself")

    def create_message(self, *args, **kwargs):
        raise AssertionError("not used")

    def set_run(self, run):
        raise AssertionError("not used")

    @property
    def run(self):
        raise AssertionError("not used")


def _on_grid(grid, timeout=30.0, rounds=2, **settings) -> privfl.Federation:
    nodes = connect_nodes(grid, timeout=timeout)
    fed = tiny_federation(
        train=None,
        partition=None,
        client_data=NodeData(len(nodes)),
        executor=FlowerGridExecutor(grid, nodes, timeout=timeout),
        **settings,
    )
    fed.run(rounds)
    return fed


def _records(fed: privfl.Federation) -> list[dict]:
    """The history as history.jsonl has it, less the wall-clock times."""
    return [
        {k: v for k, v in r.to_json().items() if not k.endswith("seconds")} for r in fed.history
    ]


def test_the_handshake_maps_each_client_to_the_node_with_its_file(folders):
    assert connect_nodes(InProcessGrid(folders)) == {0: 101, 1: 101, 2: 202, 3: 202, 4: 303, 5: 303}


def test_a_client_on_two_nodes_or_missing_is_refused_naming_them(folders, tmp_path):
    twice = {**folders, 404: folders[101]}
    with pytest.raises(WireError, match="client 0 has data on two nodes, 101 and 404"):
        connect_nodes(InProcessGrid(twice))
    (folders[202] / "client-3.safetensors").unlink()
    with pytest.raises(WireError, match=r"missing \[3\]"):
        connect_nodes(InProcessGrid(folders))


def test_nodes_that_do_not_answer_the_handshake_are_named(folders):
    with pytest.raises(privfl.PrivflError, match="SuperNodes \\['303 \\(no answer\\)'\\]"):
        connect_nodes(InProcessGrid(folders, silent={303}), timeout=0.5)


DP_DISTRIBUTED = {"dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip": 1.0}}
DP_DISTRIBUTED_SECAGG = {**DP_DISTRIBUTED, "secagg+": {"tolerated_dropout": 0.4}}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"aggregator": "trimmed-mean"},
        {"mechanisms": ["secagg+"]},
        {"mechanisms": ["dp", "secagg+"], "options": DP_DISTRIBUTED},
    ],
    ids=["fedavg", "trimmed-mean", "secagg+", "dp-distributed+secagg+"],
)
@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_one_flower_message_per_node_gives_the_serial_bytes(folders, settings):
    grid = InProcessGrid(folders, settings)
    on_grid = _on_grid(grid, **settings)
    serial = tiny_federation(num_clients=6, executor="serial", **settings)
    serial.run(2)
    assert torch.equal(on_grid.params, serial.params)
    assert _records(on_grid) == _records(serial)
    first = grid.sent[len(NODES)]  # after the handshake: round 1's train messages
    assert unpack(first.content, "test")[0] == NODES[first.metadata.dst_node_id]
    assert unpack(first.content, "test")[2]["kind"] == "train"


def test_a_node_lost_or_silent_is_dropped_or_timed_out(folders):
    grid = InProcessGrid(folders)
    nodes = connect_nodes(grid)
    executor = FlowerGridExecutor(grid, nodes, timeout=0.5)
    executor.start(tiny_federation().client_app)
    grid.fail = {202: ErrorCode.NODE_UNAVAILABLE}
    grid.silent = {303}
    fed = tiny_federation(train=None, partition=None, client_data=NodeData(6), executor=executor)
    (record,) = fed.run(1)
    assert record.values["failed"] == {
        "2": "dropped",
        "3": "dropped",
        "4": "timed out",
        "5": "timed out",
    }
    reference = tiny_federation(num_clients=6, mechanisms=[ClearSum(keep={0, 1})])
    reference.run(1)
    assert torch.allclose(fed.params, reference.params, atol=1e-6)


@pytest.mark.parametrize("phase", ["masked_input", "unmasking", "train"])
@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_stop_clients_reproduces_a_node_that_stops_mid_round(folders, phase):
    """The deployment test's reference: an in-process run whose clients 4 and 5 stop
    at a phase of round 2 gives the bytes of a Flower run whose node 303 stops then."""
    settings = {"mechanisms": ["dp", "secagg+"], "options": DP_DISTRIBUTED_SECAGG}
    grid = InProcessGrid(folders, settings, stop=(303, 2, phase))
    on_grid = _on_grid(grid, rounds=3, **settings)
    stopped = StopClients(SerialExecutor(), clients={4, 5}, round=2, phase=phase)
    serial = tiny_federation(num_clients=6, executor=stopped, **settings)
    serial.run(3)
    assert torch.equal(on_grid.params, serial.params)
    assert _records(on_grid) == _records(serial)
    assert [r.values["secagg_contributors"] for r in serial.history] == [
        6,
        6 if phase == "unmasking" else 4,  # the masked inputs came: the sum holds them
        4,
    ]
    assert serial.history[2].values["failed"] == {"4": "dropped", "5": "dropped"}


def test_an_error_of_the_client_app_itself_is_raised_naming_the_node(folders):
    grid = InProcessGrid(folders)
    executor = FlowerGridExecutor(grid, connect_nodes(grid))
    executor.start(tiny_federation().client_app)
    grid.fail = {101: ErrorCode.CLIENT_APP_RAISED_EXCEPTION}
    message = privfl.Message("secure", {"phase": "unmasking"})
    with pytest.raises(ClientError, match="privfl ClientApp on node 101 failed: as the test"):
        executor.send_and_receive({0: message})


def test_a_node_that_lost_its_host_mid_round_drops_its_clients(folders):
    grid = InProcessGrid(folders)
    executor = FlowerGridExecutor(grid, connect_nodes(grid))
    executor.start(tiny_federation().client_app)
    grid._answer = lambda node, message: pack([0, 1], [], failure="dropped", detail="host gone")
    message = privfl.Message("secure", {"phase": "unmasking"})
    assert executor.send_and_receive({1: message}) == {1: privfl.Failure("dropped")}


@pytest.mark.parametrize(
    ("options", "key"),
    [({"timeout": 0}, "timeout"), ({"timeout": True}, "timeout"), ({"nodes": {}}, "nodes")],
)
def test_bad_values_are_refused_naming_the_option(folders, options, key):
    settings = {"nodes": {0: 101}, **options}
    with pytest.raises(privfl.ConfigError) as error:
        FlowerGridExecutor(InProcessGrid(folders), **settings)
    assert error.value.key == key


def test_the_entry_point_registers_the_executor():
    pm = privfl.get_plugin_manager()
    assert pm.components.get("executor", "flower-grid") is FlowerGridExecutor
    assert pm.distributions["flower"].startswith("privfl-flower ")
    assert privfl_flower.make_server_app.__module__ == "privfl_flower.server_app"


def test_the_client_app_imports_neither_privfl_nor_torch():
    """Flower starts a process per message: the ClientApp's must start light."""
    code = (
        "import sys, privfl_flower.client_app\n"
        "assert not {'torch', 'privfl'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_plugin_package_imports_no_flower_until_used():
    """privfl loads the entry point in every process, most of which never use Flower."""
    code = (
        "import sys, privfl_flower\n"
        "assert not {'flwr', 'torch', 'privfl'} & set(sys.modules), sorted(sys.modules)\n"
        "privfl_flower.privfl_register_executors()\n"  # what privfl's plugin manager calls
        "assert 'flwr' not in sys.modules, sorted(sys.modules)\n"
        "privfl_flower.make_client_app\n"
        "assert 'flwr' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
