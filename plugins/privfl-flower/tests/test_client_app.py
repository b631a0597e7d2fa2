"""The Flower ClientApp's handlers, called in this process as a SuperNode calls them."""

from __future__ import annotations

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from privfl_flower import make_client_app
from privfl_flower.client_app import NodeConfigError
from privfl_flower.wire import HELLO_ACTION, PRIVFL_ACTION, pack, unpack


def build(*, client_data, executor, run_config):  # never called by these tests
    raise AssertionError("the handlers under test start no host")


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity._run_id = TaskIdentity._task_id = TaskIdentity._node_id = None


def _call(kind: str, content: RecordDict, node_config: dict) -> Message:
    message = Message(content, dst_node_id=7, message_type=kind)
    message.metadata.__dict__["_message_id"] = message.object_id
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    return make_client_app(build)(message, context)


def test_the_handshake_lists_the_clients_whose_files_the_folder_holds(tmp_path):
    for name in (
        "client-3.safetensors",
        "client-12.safetensors",
        "notes.txt",
        "client-x.safetensors",
    ):
        (tmp_path / name).touch()
    reply = _call(HELLO_ACTION, pack([], []), {"data-dir": str(tmp_path)})
    assert unpack(reply.content, "node")[0] == [3, 12]


@pytest.mark.parametrize("data_dir", [None, "/no/such/folder"])
def test_a_node_without_its_data_folder_fails_naming_the_node_config_key(data_dir):
    config = {} if data_dir is None else {"data-dir": data_dir}
    with pytest.raises(
        NodeConfigError, match=r"node config data-dir = .*expected the owner's folder"
    ):
        _call(HELLO_ACTION, pack([], []), config)


def test_a_phase_after_the_round_start_without_a_host_drops_the_clients(tmp_path):
    content = pack([3], [b"not read"], num_clients=6, kind="secure", phase="share_keys")
    reply = _call(PRIVFL_ACTION, content, {"data-dir": str(tmp_path)})
    clients, bodies, fields = unpack(reply.content, "node")
    assert (clients, bodies, fields["failure"]) == ([3], [], "dropped")
    assert "host is gone" in fields["detail"]


def test_the_builder_must_be_a_module_level_function():
    def nested(**settings):
        raise AssertionError

    with pytest.raises(ValueError, match="expected a function at the top of a module"):
        make_client_app(nested)
