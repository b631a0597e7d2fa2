"""Encrypted evaluation by three processes on loopback: same predictions, only the data
owner learns them, and every byte on the wire is counted (and cut where promised).

The multi-process runs start the model owner, the data owner and the dealer as spawned
processes on 127.0.0.1 with a free port; each gives up after TIMEOUT_S, and the test
terminates any process still alive. Byte counts are checked exactly against what the
one-process session counts for the same computation: without the cuts they are equal,
and each cut removes exactly the bytes it promises to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from privfl.cli.main import main
from privfl.cli.smpc_party import load_run_model
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.smpc import OpeningKind, Session, secure_predict, share_model
from privfl.smpc.beaver import BilinearOp
from privfl.smpc.channel import Channel, pack_fields, packed_size, unpack_fields
from privfl.smpc.dealer import Request
from privfl.smpc.dealer_streams import components, deal, party_shares
from privfl.smpc.distributed import (
    WireFormat,
    fix_weight_masks,
    run_party,
    shared_predictions,
)
from privfl.smpc.parties import PartySession, describe, skeleton
from privfl.smpc.prg import ChaChaPRG
from privfl.smpc.ring_matmul import int64_matmul

TIMEOUT_S = 240
ROLES = ("model-owner", "data-owner", "dealer")
ALL_CUTS_OFF = WireFormat(
    seeded_dealer=False, seeded_inputs=False, packed_bits=False, fixed_masks=False
)


def _tiny_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 10),
    )


def _tiny_images() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _party(role: str, address: str, inputs: dict, results: multiprocessing.Queue) -> None:
    """One spawned party: run it and hand its report back (or the error).

    Tensors go back as lists: a tensor would travel as a shared-memory handle that dies
    with this process.
    """
    try:
        report = run_party(role, address, timeout_s=TIMEOUT_S / 2, **inputs)
        labels = None if report.predictions is None else report.predictions.tolist()
        results.put((role, (dataclasses.replace(report, predictions=None), labels)))
    except BaseException as exc:
        results.put((role, repr(exc)))


def _run_three(model: nn.Sequential, images: torch.Tensor, wire: WireFormat, batch_size: int):
    """Run the three parties as processes; return their reports by role."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    address = f"127.0.0.1:{_free_port()}"
    inputs = {
        "model-owner": {"model": model, "wire": wire},
        "data-owner": {"images": images, "batch_size": batch_size},
        "dealer": {},
    }
    processes = [
        context.Process(target=_party, args=(role, address, inputs[role], results))
        for role in ROLES
    ]
    try:
        for process in processes:
            process.start()
        reports = dict(results.get(timeout=TIMEOUT_S) for _ in ROLES)
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    failed = {role: r for role, r in reports.items() if isinstance(r, str)}
    assert not failed, failed
    return {
        role: dataclasses.replace(
            report, predictions=None if labels is None else torch.tensor(labels)
        )
        for role, (report, labels) in reports.items()
    }


def _single_process_counts(
    model: nn.Sequential, images: torch.Tensor, batch_size: int, fixed_masks: bool = False
):
    """What the one-process session counts for the same computation, and its openings."""
    session = Session(seed=5, keep_opened_values=False)
    shared_model = share_model(session, model)
    model_bytes = session.traffic.input_bytes
    if fixed_masks:
        shared_model = fix_weight_masks(session, shared_model)
    predictions = []
    for batch in images.split(batch_size):
        labels, _ = session.run_two_phase(secure_predict, shared_model, session.share_float(batch))
        predictions.append(labels)
    return session, model_bytes, torch.cat(predictions)


def _sent(report, phase: str) -> int:
    return report.bytes[phase]["sent"]


@pytest.fixture(scope="module")
def cnn_runs():
    model, images = _tiny_cnn(), _tiny_images()
    return {
        "off": _run_three(model, images, ALL_CUTS_OFF, batch_size=4),
        "on": _run_three(model, images, WireFormat(), batch_size=4),
    }


def test_three_processes_predict_like_plaintext_and_one_process(cnn_runs):
    model, images = _tiny_cnn(), _tiny_images()
    with torch.no_grad():
        plaintext = model(images).argmax(dim=1)
    for reports in cnn_runs.values():
        assert torch.equal(reports["data-owner"].predictions, plaintext)
    for fixed_masks in (False, True):
        _, _, one_process = _single_process_counts(model, images, 4, fixed_masks)
        assert torch.equal(one_process, plaintext)


def test_only_the_data_owner_learns_the_predictions(cnn_runs):
    for reports in cnn_runs.values():
        owner, dealer = reports["model-owner"], reports["dealer"]
        assert owner.predictions is None
        assert dealer.predictions is None
        assert OpeningKind.OUTPUT.value not in owner.opened
        assert owner.bytes["output"]["received"] == 0
        assert _sent(owner, "output") > 0
        assert set(owner.opened) == {"beaver-masked", "and-masked", "bit-masked"}
        assert set(reports["data-owner"].opened) == {*owner.opened, "output"}
        received = {phase: b["received"] for phase, b in dealer.bytes.items() if b["received"]}
        assert list(received) == ["setup"]  # only the public structure and batch shapes


def test_without_cuts_the_wire_carries_what_the_one_process_session_counts(cnn_runs):
    reports = cnn_runs["off"]
    session, model_bytes, _ = _single_process_counts(_tiny_cnn(), _tiny_images(), 4)
    owner, data_owner, dealer = (reports[role] for role in ROLES)
    # the one-process session opens the predictions both ways (16 bytes an image); here
    # only party 0 sends its share of them (8 bytes an image), in the output phase
    # and it counts bit fields packed, where this run sends whole words
    images = len(_tiny_images())
    unpacked = sum(
        2 * (8 * math.prod(e.shape) - packed_size(math.prod(e.shape), e.width))
        for e in session.log.entries
    )
    online = _sent(owner, "online") + _sent(data_owner, "online")
    assert online == session.traffic.online_bytes - 16 * images + unpacked > 0
    assert _sent(owner, "output") == 8 * images
    assert _sent(data_owner, "output") == 0
    assert _sent(dealer, "dealer") == session.traffic.offline_bytes
    # the one-process session counts both shares of each input (an owner apart from the
    # compute parties); here each owner is a compute party and sends only the other share
    assert 2 * _sent(owner, "input") == model_bytes
    assert 2 * _sent(data_owner, "input") == session.traffic.input_bytes - model_bytes


def test_with_all_cuts_the_wire_carries_what_they_promise(cnn_runs):
    before, after = cnn_runs["off"], cnn_runs["on"]
    model, images = _tiny_cnn(), _tiny_images()
    # fixed masks and packed fields: the one-process session with the weights' masks
    # fixed counts the same online bytes (it opens the predictions both ways)
    fixed, _, _ = _single_process_counts(model, images, 4, fixed_masks=True)
    online = _sent(after["model-owner"], "online") + _sent(after["data-owner"], "online")
    assert online == fixed.traffic.online_bytes - 16 * len(images)
    assert 2 * online < _sent(before["model-owner"], "online") + _sent(
        before["data-owner"], "online"
    )
    # seeded dealer: only party 1's share of each dependent component travels, packed
    session = Session(seed=0)
    requests = session.plan(fix_weight_masks, share_model(session, model))
    meta_model = fix_weight_masks(session, share_model(session, model)).to_meta()
    for batch in images.split(4):
        meta_images = session.share_float(batch).to_meta()
        requests += session.plan(shared_predictions, meta_model, meta_images)
    dependent = sum(
        packed_size(math.prod(part.shape), part.width)
        for request in requests
        for part in components(request)
        if part.dependent
    )
    assert _sent(after["dealer"], "dealer") == dependent < _sent(before["dealer"], "dealer") / 5
    # seeded inputs: a 32-byte key instead of the shares
    for role in ("model-owner", "data-owner"):
        assert _sent(after[role], "input") == 0 < _sent(before[role], "input")


def test_fixed_masks_open_each_weight_once_instead_of_once_per_batch():
    model, images = _tiny_cnn(), _tiny_images()
    weights = [math.prod(model[0].weight.shape), math.prod(model[4].weight.shape)]
    batches = len(images.split(4))
    words = {}
    for fixed_masks in (False, True):
        session, _, _ = _single_process_counts(model, images, 4, fixed_masks)
        opened = [e.shape for e in session.log.entries if e.kind is OpeningKind.BEAVER_MASKED]
        words[fixed_masks] = sum(math.prod(shape) for shape in opened)
        if fixed_masks:
            assert opened[:2] == [(weights[0],), (weights[1],)]
    assert batches > 1
    assert words[False] - words[True] == (batches - 1) * sum(weights)


def test_dealt_shares_add_up_and_parties_draw_the_same_ones():
    requests = [
        Request("triple", ((3, 4), (4, 2)), BilinearOp("matmul")),
        Request("mask", ((4, 2),), fixed="w"),
        Request("triple", ((3, 4), (4, 2)), BilinearOp("matmul"), fixed="w"),
        Request("binary_triple", ((5,), (2, 5)), width=4),
        Request("random_bit", ((7,),)),
        Request("held_and", ((6,),)),
        Request("bit_product", ((2, 1), (2, 3))),
    ]
    dealer0, dealer1 = ChaChaPRG.from_key(bytes(32)), ChaChaPRG.from_key(bytes([1] * 32))
    party0, party1 = ChaChaPRG.from_key(bytes(32)), ChaChaPRG.from_key(bytes([1] * 32))

    def draw(stream):
        return lambda part: stream.fields(part.shape, 1 if part.kind == "bits" else part.width)

    fixed: dict[str, torch.Tensor] = {}
    masks = {}
    for request in requests:
        shares0, shares1 = deal(request, draw(dealer0), draw(dealer1), int64_matmul, fixed)
        drawn0 = party_shares(request, 0, draw(party0), draw(party0))
        assert all(torch.equal(x, y) for x, y in zip(drawn0, shares0, strict=True))
        parts = components(request)
        sent = iter([s for s, part in zip(shares1, parts, strict=True) if part.dependent])
        drawn1 = party_shares(request, 1, draw(party1), lambda part, sent=sent: next(sent))
        assert all(torch.equal(x, y) for x, y in zip(drawn1, shares1, strict=True))
        if request.kind == "mask":  # both shares drawn, nothing sent; the dealer keeps it
            assert not any(part.dependent for part in components(request))
            masks["w"] = shares0[0] + shares1[0]
            assert torch.equal(fixed["w"], masks["w"])
        elif request.kind == "triple" and request.fixed:
            a, c = (s0 + s1 for s0, s1 in zip(shares0, shares1, strict=True))
            assert torch.equal(c, a @ masks["w"])
        elif request.kind == "triple":
            a, b, c = (s0 + s1 for s0, s1 in zip(shares0, shares1, strict=True))
            assert torch.equal(c, a @ b)
        elif request.kind == "binary_triple":
            a, b, c = (s0 ^ s1 for s0, s1 in zip(shares0, shares1, strict=True))
            assert torch.equal(c, a & b)  # a broadcasts against b
            assert components(request)[-1].width == 4
            assert int(a.max()) < 16  # only the 4 low bits are drawn
        elif request.kind == "held_and":  # a is party 0's alone, b party 1's: not dealt
            assert not shares1[0].any()
            assert not shares0[1].any()
            assert [part.holder for part in parts] == [0, 1, None]
            a, b, c = (s0 ^ s1 for s0, s1 in zip(shares0, shares1, strict=True))
            assert torch.equal(c, a & b)
        elif request.kind == "bit_product":  # r both ways, a, and a * r: two corrections
            assert [part.dependent for part in parts] == [False, True, False, True]
            bit = shares0[0] ^ shares1[0]
            r, a, ar = (s0 + s1 for s0, s1 in zip(shares0[1:], shares1[1:], strict=True))
            assert torch.equal(r, bit)
            assert torch.equal(ar, a * bit)
        else:
            bit = shares0[0] ^ shares1[0]
            assert set(bit.tolist()) <= {0, 1}
            assert torch.equal(shares0[1] + shares1[1], bit)


def test_bit_fields_pack_without_gaps_and_back():
    words = torch.randint(-(2**63), 2**63 - 1, (3, 11), generator=torch.Generator().manual_seed(0))
    for width, size in ((1, 5), (2, 9), (4, 17), (8, 33), (16, 66), (32, 132), (64, 264)):
        packed = pack_fields(words, width)
        assert packed.dtype == torch.uint8
        assert packed.numel() == size == packed_size(33, width)
        low = words if width == 64 else words & ((1 << width) - 1)
        assert torch.equal(unpack_fields(packed, words.shape, width), low)


def test_model_structure_round_trips_and_bad_descriptions_are_refused():
    shared = share_model(Session(seed=0), _tiny_cnn())
    description = describe(shared.to_meta())
    assert describe(skeleton(description)) == description
    assert "weight" in description[0]
    assert "values" not in str(description)
    with pytest.raises(ValueError, match="model description"):
        skeleton([{"layer": "linear", "weight": [-1, 3], "bias": None}])
    with pytest.raises(ValueError, match="model description"):
        skeleton([{"layer": "softmax"}])


def test_a_party_never_opens_outputs_both_ways():
    session = PartySession(0, Channel(0), frac_bits=16)
    shared = share_model(Session(seed=0), _tiny_cnn()).layers[-1].weight_t
    with pytest.raises(ValueError, match="data owner only"):
        session.open(shared, OpeningKind.OUTPUT)
    with pytest.raises(ValueError, match="only party 1"):
        session.receive_output(shared)


def test_evaluate_party_commands_run_the_three_parties_on_a_2nn_run(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["--model", "2nn", "--clients", "10", "--clients-per-round", "2", "--rounds", "1"]
    assert main(["run", *flags, "--run-dir", str(run_dir), "--quiet"]) == 0
    address = f"127.0.0.1:{_free_port()}"
    extra = {
        "model-owner": ["--run-dir", str(run_dir)],
        "data-owner": ["--limit", "5", "--batch-size", "5"],
        "dealer": [],
    }
    commands = [
        [
            sys.executable,
            "-m",
            "privfl",
            "evaluate-party",
            "--role",
            role,
            "--address",
            address,
            "--timeout",
            "120",
            "--output",
            str(tmp_path / f"{role}.json"),
            "--quiet",
            *extra[role],
        ]
        for role in ROLES
    ]
    processes = [subprocess.Popen(command) for command in commands]
    try:
        codes = [process.wait(timeout=TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert codes == [0, 0, 0]
    results = {role: json.loads((tmp_path / f"{role}.json").read_text()) for role in ROLES}
    with torch.no_grad():
        logits = load_run_model(run_dir)(images_to_float(load_bundled_mnist().test_images[:5]))
    top2 = logits.topk(2, dim=1).values
    assert bool(((top2[:, 0] - top2[:, 1]) > 1e-3).all())  # no near-ties to flip
    assert results["data-owner"]["predictions"] == logits.argmax(dim=1).tolist()
    assert 0.0 <= results["data-owner"]["accuracy"] <= 1.0
    assert "predictions" not in results["model-owner"]
    assert "predictions" not in results["dealer"]
    assert all(results[role]["bytes_sent_per_image"] > 0 for role in ROLES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "model-owner", "--address", "127.0.0.1:1"], "--run-dir = None"),
        (["--role", "dealer", "--address", "localhost"], "address = 'localhost'"),
        (["--role", "data-owner", "--address", "127.0.0.1:1", "--limit", "-1"], "--limit"),
        (["--role", "dealer", "--address", "127.0.0.1:1", "--frac-bits", "40"], "--frac-bits"),
    ],
)
def test_evaluate_party_refuses_bad_input_before_connecting(argv, message, capsys):
    assert main(["evaluate-party", *argv]) == 2
    assert message in capsys.readouterr().out
