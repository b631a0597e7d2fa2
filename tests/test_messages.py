"""The message encoding: lossless, versioned, pickle-free, and strict about what it reads."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from privfl.messages import (
    VERSION,
    Message,
    MessageError,
    bytes_tensor,
    check_finite,
    decode,
    encode,
    tensor_bytes,
)


def _message() -> Message:
    return Message(
        "update",
        {"num_examples": 7, "train_loss": 0.25, "statistics": {"dp.unclipped": 0.5}},
        {
            "update": torch.tensor([1.5, -2.0, 3e-38], dtype=torch.float32),
            "ids": torch.arange(3),
            "data": bytes_tensor(b"\x00\xffprivfl"),
        },
    )


def test_encoding_round_trips_values_and_tensors_exactly():
    original = _message()
    copy = decode(encode(original), sender="client 3")
    assert copy.kind == original.kind
    assert copy.values == original.values
    assert set(copy.tensors) == set(original.tensors)
    for name, tensor in original.tensors.items():
        assert copy.tensors[name].dtype == tensor.dtype
        assert torch.equal(copy.tensors[name], tensor)
    assert tensor_bytes(copy.tensors["data"]) == b"\x00\xffprivfl"


def test_the_bytes_are_a_safetensors_buffer_with_a_versioned_header():
    data = encode(_message())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["privfl"])
    assert header["version"] == VERSION
    assert header["kind"] == "update"


def _with_header(header: dict) -> bytes:
    from safetensors.torch import save

    return save({"x": torch.zeros(1)}, metadata={"privfl": json.dumps(header)})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "truncated"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "malformed"),
        (b"\x80" * 64, "truncated"),
        (_with_header({"version": VERSION + 1, "kind": "update", "values": {}}), "version 2"),
        (_with_header({"version": VERSION, "kind": "pickle", "values": {}}), "unknown kind"),
        (_with_header({"version": VERSION, "kind": "update", "values": []}), "unknown kind"),
    ],
)
def test_malformed_bytes_are_refused_naming_the_sender(data, match):
    with pytest.raises(MessageError, match=match) as info:
        decode(data, sender="client 9")
    assert "client 9" in str(info.value)


def test_values_that_json_cannot_hold_are_refused():
    with pytest.raises(MessageError, match="not JSON-safe"):
        encode(Message("update", {"train_loss": float("nan")}))
    with pytest.raises(MessageError, match="not JSON-safe"):
        encode(Message("update", {"when": object()}))


def test_missing_fields_name_the_sender_and_the_field():
    message = Message("update", {})
    with pytest.raises(MessageError, match="update message from client 4 lacks 'num_examples'"):
        message.value("num_examples", "client 4")
    with pytest.raises(MessageError, match="lacks tensor 'update'"):
        message.tensor("update", "client 4")


@pytest.mark.parametrize("value", [float("inf"), "1", True, None])
def test_check_finite_refuses_non_numbers(value):
    with pytest.raises(MessageError, match="client 2 sent train_loss"):
        check_finite(value, "train_loss", "client 2")
