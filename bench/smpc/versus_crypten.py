"""privfl's three-process encrypted evaluation next to CrypTen 0.4.1's two parties + TTP.

Run it with a Python that has CrypTen installed beside privfl's torch (CrypTen pins old
versions of everything, so it installs with ``--no-deps`` into a separate venv, never the
project's)::

    python3.11 -m venv /work/venvs/crypten
    /work/venvs/crypten/bin/pip install torch==2.14.1 -c .ci/constraints.txt
    /work/venvs/crypten/bin/pip install --no-deps crypten==0.4.1
    /work/venvs/crypten/bin/pip install omegaconf pyyaml onnx -c .ci/constraints.txt
    /work/venvs/crypten/bin/pip install -e .
    /work/venvs/crypten/bin/python bench/smpc/versus_crypten.py

(``omegaconf``, ``pyyaml`` and ``onnx`` are what ``import crypten`` needs; the rest of
its metadata, torchvision, pandas, tensorboard, scikit-learn, is for its examples.)

Both systems evaluate the same models with the same random weights (``torch.manual_seed``)
on the same real MNIST test images (``--data-dir``, default ``../shared/data/mnist``), in
batches of ``--batch``, in this run on this machine, one after the other, each as three
processes on loopback (gloo over TCP): privfl's model owner, data owner and dealer
(:func:`privfl.smpc.distributed.run_party`, what ``privfl evaluate-party`` runs), and
CrypTen's two parties plus its trusted third party (``crypten.cfg.mpc.provider = "TTP"``).
Each computes the secure argmax and reveals the predicted labels to the data owner only.
Printed per image: wall-clock ms from the first batch to the last (the parties' slowest),
online bytes (between the compute parties), dealer bytes (from the dealer or the TTP),
their total, the ratios privfl / CrypTen and the agreement of each with the plaintext
predictions, with the load average (the machine may be shared: ratios, measured side by
side, are what to compare). The one-off sharing of the weights and images is not counted
on either side.

Bytes are counted the way each system counts them. privfl's channel counts the payload
bytes each party sends. CrypTen's communicator (``cfg.communicator.verbose``) counts, per
party, the elements it sends and receives times 8 bytes; its own documentation says to sum
over the parties and halve to get the bytes on the wire, which is what is printed as
CrypTen's online bytes (after taking out party 0's exchange with the TTP), and the TTP's
count (the correction tensors it sends, plus the small requests it receives) is printed as
its dealer bytes.

CrypTen 0.4.1 on torch 2.14 needs one patch, done here only: its ONNX converter imports
``torch.onnx._internal.registration``, which torch 2.14 no longer has. It is used only to
convert PyTorch models through ONNX; the models here are built from ``crypten.nn`` layers
directly, so an empty stand-in module is enough.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn

from privfl.data.mnist import images_to_float, load_mnist
from privfl.smpc.distributed import run_party

sys.path.insert(0, str(Path(__file__).parent))
from bench_smpc import cnn, mlp  # the models of the single-process bench

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("model-owner", "data-owner", "dealer")
TIMEOUT_S = 1800


MODELS = {"MLP": mlp, "CNN": cnn}


@dataclasses.dataclass
class Result:
    """One system's figures on one model: totals over all images."""

    seconds: float
    online_bytes: float
    dealer_bytes: float
    predictions: torch.Tensor

    @property
    def total_bytes(self) -> float:
        """Online plus dealer bytes."""
        return self.online_bytes + self.dealer_bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(targets: list[tuple], timeout_s: float = TIMEOUT_S) -> dict:
    """Run ``(key, function, args)`` as spawned processes; return their results by key."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_child, args=(key, fn, args, queue)) for key, fn, args in targets
    ]
    try:
        for process in processes:
            process.start()
        results = dict(queue.get(timeout=timeout_s) for _ in processes)
        for process in processes:
            process.join(timeout=60)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    failed = {key: value for key, value in results.items() if isinstance(value, str)}
    if failed:
        raise RuntimeError(f"parties failed: {failed}")
    return results


def _child(key, fn, args, queue) -> None:
    torch.set_num_threads(1)
    try:
        queue.put((key, fn(*args)))
    except BaseException as exc:  # handed back to the parent, which raises it
        queue.put((key, f"{type(exc).__name__}: {exc}"))


# ---- privfl: model owner, data owner, dealer -----------------------------------------


def _privfl_party(role: str, address: str, inputs: dict) -> dict:
    start = time.perf_counter()
    report = run_party(role, address, timeout_s=TIMEOUT_S, **inputs)
    seconds = time.perf_counter() - start
    sent = {phase: counts["sent"] for phase, counts in report.bytes.items()}
    labels = None if report.predictions is None else report.predictions.tolist()
    busy = report.offline_s + report.online_s  # compute parties: from the first batch on
    return {"sent": sent, "seconds": seconds, "busy": busy, "predictions": labels}


def run_privfl(model: nn.Sequential, images: torch.Tensor, batch: int) -> Result:
    address = f"127.0.0.1:{_free_port()}"
    inputs = {
        "model-owner": {"model": model},
        "data-owner": {"images": images, "batch_size": batch},
        "dealer": {},
    }
    reports = _spawn([(role, _privfl_party, (role, address, inputs[role])) for role in ROLES])
    online = sum(reports[role]["sent"]["online"] for role in ROLES[:2])
    online += reports["model-owner"]["sent"]["output"]
    return Result(
        seconds=max(reports[role]["busy"] for role in ROLES[:2]),
        online_bytes=online,
        dealer_bytes=reports["dealer"]["sent"]["dealer"],
        predictions=torch.tensor(reports["data-owner"]["predictions"]),
    )


# ---- CrypTen: two parties and the TTP --------------------------------------------------


def _import_crypten():
    """Import CrypTen 0.4.1 on torch 2.14 (see the module docstring for the one patch)."""
    name = "torch.onnx._internal.registration"
    try:
        __import__(name)
    except ImportError:
        stand_in = types.ModuleType(name)
        stand_in.registry = None  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    import crypten

    return crypten


def _crypten_model(crypten, model: nn.Sequential):
    """The same network from ``crypten.nn`` layers, with the same weights."""
    layers = []
    for module in model:
        if isinstance(module, nn.Linear):
            layer = crypten.nn.Linear(module.in_features, module.out_features)
        elif isinstance(module, nn.Conv2d):
            layer = crypten.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size)
        elif isinstance(module, nn.ReLU):
            layer = crypten.nn.ReLU()
        elif isinstance(module, nn.MaxPool2d):
            layer = crypten.nn.MaxPool2d(2)
        else:
            layer = crypten.nn.Flatten()
        if isinstance(module, nn.Linear | nn.Conv2d):
            layer.weight.data.copy_(module.weight.detach())
            layer.bias.data.copy_(module.bias.detach())
        layers.append(layer)
    return crypten.nn.Sequential(*layers)


def _crypten_env(rank: int, world_size: int, rendezvous: str) -> None:
    os.environ.update(
        {
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "RENDEZVOUS": f"file://{rendezvous}",
            "DISTRIBUTED_BACKEND": "gloo",
        }
    )


def _crypten_party(
    rank: int, rendezvous: str, model: nn.Sequential, images: torch.Tensor, batch: int
) -> dict:
    crypten = _import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    _crypten_env(rank, 2, rendezvous)
    crypten.init()
    comm = crypten.comm.get()
    secure = _crypten_model(crypten, model).encrypt(src=0)
    secure.eval()
    batches = [
        crypten.cryptensor(part if rank == 1 else torch.zeros_like(part), src=1)
        for part in images.split(batch)
    ]
    comm.reset_communication_stats()
    start = time.perf_counter()
    labels = []
    with crypten.no_grad():
        for shared in batches:
            predicted = secure(shared).argmax(dim=1, one_hot=False)
            labels.append(predicted.get_plain_text(dst=1))
    seconds = time.perf_counter() - start
    stats = comm.get_communication_stats()
    crypten.uninit()
    return {
        "bytes": stats["bytes"],
        "seconds": seconds,
        "predictions": torch.cat(labels).round().long().tolist() if rank == 1 else None,
    }


def _crypten_ttp(rendezvous: str) -> dict:
    crypten = _import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    _crypten_env(2, 2, rendezvous)
    crypten.mpc.provider.TTPServer()  # serves until the parties shut down
    stats = crypten.comm.get().get_communication_stats()
    crypten.uninit()
    return {"bytes": stats["bytes"]}


def run_crypten(model: nn.Sequential, images: torch.Tensor, batch: int) -> Result:
    rendezvous = tempfile.NamedTemporaryFile(delete=True).name  # noqa: SIM115 (a free name)
    targets = [(rank, _crypten_party, (rank, rendezvous, model, images, batch)) for rank in (0, 1)]
    reports = _spawn([*targets, ("ttp", _crypten_ttp, (rendezvous,))])
    ttp = reports["ttp"]["bytes"]
    # each party counts what it sends and receives; party 0's count also holds its
    # exchange with the TTP (the same as the TTP's count): take it out, then halve
    online = (reports[0]["bytes"] + reports[1]["bytes"] - ttp) / 2
    return Result(
        seconds=max(reports[rank]["seconds"] for rank in (0, 1)),
        online_bytes=online,
        dealer_bytes=ttp,
        predictions=torch.tensor(reports[1]["predictions"]),
    )


def _row(name: str, system: str, result: Result, n: int, agree: float) -> str:
    ms, online, dealer = (
        1e3 * result.seconds / n,
        result.online_bytes / n / 1e3,
        result.dealer_bytes / n / 1e3,
    )
    return (
        f"{name:<4} {system:<8} {ms:9.2f} {online:10.1f} {dealer:10.1f} {online + dealer:10.1f}"
        f" {agree:6.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="MNIST test images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()
    images = images_to_float(load_mnist(args.data_dir).test_images[: args.images])
    n = len(images)
    crypten = _import_crypten()
    print(f"torch {torch.__version__}, CrypTen {crypten.__version__}, {os.cpu_count()} CPUs")
    print(f"{n} MNIST test images in batches of {args.batch}; one thread a process")
    print(
        f"{'':<4} {'system':<8} {'ms/image':>9} {'online kB':>10} {'dealer kB':>10}"
        f" {'total kB':>10} {'agree':>6}   (kB per image; agree: with plaintext)"
    )
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        with torch.no_grad():
            plain = model(images).argmax(dim=1)
        load_before = os.getloadavg()[0]
        ours = run_privfl(model, images, args.batch)
        theirs = run_crypten(model, images, args.batch)
        for system, result in (("privfl", ours), ("CrypTen", theirs)):
            agree = (result.predictions == plain).double().mean().item()
            print(_row(name, system, result, n, agree))
        ratio = (
            f"{ours.seconds / theirs.seconds:9.2f}"
            f" {ours.online_bytes / theirs.online_bytes:10.2f}"
            f" {ours.dealer_bytes / theirs.dealer_bytes:10.2f}"
            f" {ours.total_bytes / theirs.total_bytes:10.2f}"
        )
        print(f"{name:<4} {'ratio':<8} {ratio}   (privfl / CrypTen)")
        print(f"     load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
