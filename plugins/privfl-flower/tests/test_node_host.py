"""A node's privfl host: started once, answers with the serial bytes, keeps round state,
refuses strangers, and exits when its SuperNode is gone or it idles too long."""

from __future__ import annotations

import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from pathlib import Path

import pytest
from privfl_flower import node_host

from privfl.builtin.executors import SerialExecutor
from privfl.client_data import FolderData, write_client_folders
from privfl.client_runtime import ClientHost
from privfl.data.partition import iid
from privfl.messages import Message, decode, encode
from privfl.testing import tiny_dataset

APP = str(Path(__file__).parent / "flower_app")
RUN_CONFIG = {"mechanisms": "secagg+"}


@pytest.fixture
def owner(tmp_path, monkeypatch):
    """The tests' app on sys.path (as Flower puts an installed app), and one owner's
    folder with clients 0 and 1 of six (random rows of the app's 784 inputs); the
    folder ``all`` holds the six, for the in-process federation."""
    monkeypatch.syspath_prepend(APP)
    train, _ = tiny_dataset(num_features=784, seed=0)
    partition = iid(len(train), 6, seed=0)
    write_client_folders(tmp_path / "all", train, partition)
    source = write_client_folders(tmp_path / "owner", train, partition)
    for client in range(2, 6):
        source.path(client).unlink()
    return tmp_path / "owner"


def _in_process(owner, executor):
    """The tests' app's federation in this process, on every client's data."""
    from privfl_flower_testapp.task import build

    data = FolderData(owner.parent / "all", 6)
    return build(client_data=data, executor=executor, run_config=RUN_CONFIG)


@pytest.fixture
def supernode():
    """A stand-in for the SuperNode's process, which the host watches."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def _start(owner, supernode, idle_timeout=600.0):
    return node_host.start(
        "privfl_flower_testapp.task:build",
        data_dir=str(owner),
        num_clients=6,
        run_config=RUN_CONFIG,
        threads=1,
        idle_timeout=idle_timeout,
        watch=supernode.pid,
    )


def _gone(address: str, key: bytes, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            node_host.ask(address, key, {})
        except node_host.HostGoneError:
            return True
        time.sleep(0.2)
    return False


class Recording(SerialExecutor):
    """The serial executor, keeping the first exchange's messages."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.first: dict[int, Message] = {}

    def send_and_receive(self, messages):
        self.first = self.first or dict(messages)
        return super().send_and_receive(messages)


def _train_messages(owner) -> dict[int, Message]:
    """Round 1's train messages for clients 0 and 1, as the server half sends them."""
    executor = Recording()
    _in_process(owner, executor).run(1)
    return {c: executor.first[c] for c in (0, 1)}


def test_the_host_answers_with_the_bytes_of_an_in_process_client_and_keeps_its_state(
    owner, supernode
):
    address, key = _start(owner, supernode)
    messages = _train_messages(owner)
    replies = node_host.ask(address, key, {c: encode(m) for c, m in messages.items()})
    expected = ClientHost(_in_process(owner, "serial").client_app).handle_all(messages)
    for client in (0, 1):
        reply = decode(replies[client], sender=f"client {client}")
        assert reply.kind == "secure-reply"
        assert reply.values == expected[client].values
    # The host keeps client 0's protocol state for the next phase (whose protocol
    # refuses a message without its data), where client 2 trained here has none.
    phase = encode(Message("secure", {"phase": "share_keys"}))
    refused = decode(node_host.ask(address, key, {0: phase})[0], sender="client 0")
    assert refused.kind == "refused"
    assert "lacks tensor 'data'" in refused.values["reason"]
    with pytest.raises(RuntimeError, match=r"client 2 has no secure sum under way"):
        node_host.ask(address, key, {2: phase})


def test_a_host_that_cannot_build_the_client_half_says_why(owner, supernode):
    with pytest.raises(RuntimeError, match=r"(?s)did not start:.*no attribute 'no_such_build'"):
        node_host.start(
            "privfl_flower_testapp.task:no_such_build",
            data_dir=str(owner),
            num_clients=6,
            run_config={},
            threads=1,
            idle_timeout=600.0,
            watch=supernode.pid,
        )


def test_a_stranger_without_the_key_is_refused_and_the_host_serves_on(owner, supernode):
    address, key = _start(owner, supernode)
    with pytest.raises(AuthenticationError):
        node_host.ask(address, b"x" * 32, {})
    assert node_host.ask(address, key, {}) == {}


def test_the_host_exits_when_its_supernode_is_gone(owner, supernode):
    address, key = _start(owner, supernode)
    supernode.kill()
    supernode.wait()
    assert _gone(address, key)
    assert not Path(address).parent.exists()  # its private folder is removed


def test_the_host_exits_after_idling_for_idle_timeout_seconds(owner, supernode):
    address, _ = _start(owner, supernode, idle_timeout=1.0)
    deadline = time.monotonic() + 30  # (asking would count as use: watch its folder)
    while Path(address).parent.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(address).parent.exists()
    assert supernode.poll() is None
