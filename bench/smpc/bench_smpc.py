"""Benchmark of the SMPC engine: secure inference cost per image, limb matmul, truncation.

Run ``python bench/smpc/bench_smpc.py`` (``--batch``, ``--cnn-batch``, ``--threads``,
``--repeats``). Four models, with random weights and random 28x28 inputs:

* ``MLP``: the 784-500-10 ReLU perceptron;
* ``CNN``: the small conv(1,8,5)-ReLU-maxpool2-conv(8,16,5)-ReLU-maxpool2-fc(256,100)-
  ReLU-fc(100,10);
* ``2NN``: McMahan et al.'s 784-200-200-10 perceptron, :class:`privfl.algorithms.models.TwoNN`;
* ``McCNN``: McMahan et al.'s CNN, :class:`privfl.algorithms.models.CNN` (conv 32 and 64 channels,
  padding 2, fc 3136-512-10). It runs on a smaller batch (``--cnn-batch``, default 20):
  at 100 images the dealer's precomputed material alone would take about 3 GB and one
  secure run over a minute on a 2-core machine.

For each it prints ms per image for the offline phase (planning and dealer generation),
the online phase and their sum (fastest of ``--repeats`` runs: the machine may be
shared), bytes per image (online openings, offline dealer material, the data owner's
input sharing; the model owner's one-off sharing of the weights is shown apart, in MB),
next to plaintext inference, all measured in this run; only the predictions are opened.
Offline bytes include the masks of the weights, which are drawn once per batch, so they
shrink per image as the batch grows. It then compares the exact limb matmul with torch's
int64 matmul and measures the SecureML truncation failure rate.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from privfl.algorithms.models import CNN, TwoNN
from privfl.smpc import (
    ChaChaPRG,
    Session,
    SharedTensor,
    limb_matmul,
    reconstruct,
    secure_predict,
    share,
    share_model,
    truncate_shares,
)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def best_of(fn, repeats: int = 5) -> float:
    """Fastest wall-clock seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def secure_run(model: nn.Sequential, images: torch.Tensor, matmul_method: str) -> dict:
    session = Session(matmul_method=matmul_method, keep_opened_values=False)
    shared_model = share_model(session, model)
    model_bytes = session.traffic.input_bytes
    start = time.perf_counter()
    shared_images = session.share_float(images)
    input_s = time.perf_counter() - start
    predictions, times = session.run_two_phase(secure_predict, shared_model, shared_images)
    n = images.shape[0]
    return {
        "predictions": predictions,
        "offline_ms": 1e3 * times.offline_s / n,
        "online_ms": 1e3 * times.online_s / n,
        "total_ms": 1e3 * times.total_s / n,
        "input_ms": 1e3 * input_s / n,
        "online_kb": session.traffic.online_bytes / n / 1e3,
        "offline_kb": session.traffic.offline_bytes / n / 1e3,
        "input_kb": (session.traffic.input_bytes - model_bytes) / n / 1e3,
        "model_mb": model_bytes / 1e6,
        "rounds": session.traffic.rounds,
    }


MODELS = (("MLP", mlp), ("CNN", cnn), ("2NN", TwoNN), ("McCNN", CNN))


def bench_models(batch: int, cnn_batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    images = torch.rand(batch, 1, 28, 28)
    print(f"\n== secure inference, predictions opened, best of {repeats} ==")
    print(
        f"{'model':<6} {'batch':>5} {'matmul':<6} {'offline':>8} {'online':>8} {'total':>8}"
        f" {'plain':>7} {'online':>8} {'offline':>8} {'input':>6} {'model':>6} {'rounds':>6}"
        f" {'agree':>5}"
    )
    print(
        f"{'':<19} {'ms/img':>8} {'ms/img':>8} {'ms/img':>8} {'ms/img':>7} {'kB/img':>8}"
        f" {'kB/img':>8} {'kB/img':>6} {'MB':>6}"
    )
    input_ms = 0.0
    for name, make in MODELS:
        n = cnn_batch if make is CNN else batch
        x = images[:n]
        model = make().eval()
        with torch.no_grad():
            plain_ms = 1e3 * best_of(lambda m=model, x=x: m(x)) / n
            expected = model(x).argmax(dim=1)
        secure_run(model, x[:4], "int64")  # warm-up: first use of meta tensors, BLAS
        for method in ("int64", "limb"):
            runs = [secure_run(model, x, method) for _ in range(repeats)]
            r = min(runs, key=lambda run: run["total_ms"])
            input_ms = max(input_ms, r["input_ms"])
            agree = (r["predictions"] == expected).double().mean().item()
            print(
                f"{name:<6} {n:5d} {method:<6} {r['offline_ms']:8.2f} {r['online_ms']:8.2f}"
                f" {r['total_ms']:8.2f} {plain_ms:7.4f} {r['online_kb']:8.1f}"
                f" {r['offline_kb']:8.1f} {r['input_kb']:6.1f} {r['model_mb']:6.1f}"
                f" {r['rounds']:6d} {agree:5.2f}"
            )
    print(f"input sharing by the data owner, not in offline/online: at most {input_ms:.3f} ms/img")


def bench_matmul() -> None:
    print("\n== exact ring matmul: limb method (float64 BLAS) vs torch int64 matmul ==")
    print(f"{'shape (M, K, N)':<22} {'int64 ms':>9} {'limb22 ms':>10} {'limb16 ms':>10} exact")
    prg = ChaChaPRG(seed=0)
    for m, k, n in ((100, 784, 500), (6400, 200, 16), (57600, 25, 8), (512, 512, 512)):
        a, b = prg.ring((m, k)), prg.ring((k, n))
        exact = torch.equal(limb_matmul(a, b), torch.matmul(a, b))
        t_int = best_of(lambda a=a, b=b: torch.matmul(a, b))
        t_22 = best_of(lambda a=a, b=b: limb_matmul(a, b, 22))
        t_16 = best_of(lambda a=a, b=b: limb_matmul(a, b, 16))
        shape = f"({m}, {k}, {n})"
        print(f"{shape:<22} {1e3 * t_int:9.2f} {1e3 * t_22:10.2f} {1e3 * t_16:10.2f} {exact}")


def bench_truncation(samples: int = 4_000_000) -> None:
    print("\n== SecureML truncation failure rate (frac_bits 16, x = 2^l_x) ==")
    print(f"{'l_x':>4} {'measured':>10} {'|x|/2^64':>10} {'bound 2^(l_x+1-64)':>19}")
    prg = ChaChaPRG()  # fresh os.urandom key
    for l_x in (48, 56, 58, 60, 62):
        x = torch.full((samples,), 2**l_x, dtype=torch.int64)
        out = reconstruct(SharedTensor(truncate_shares(share(x, prg).shares, 16)))
        rate = ((out - (x >> 16)).abs() > 1).double().mean().item()
        print(f"{l_x:4d} {rate:10.2e} {2.0 ** (l_x - 64):10.2e} {2.0 ** (l_x + 1 - 64):19.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--cnn-batch", type=int, default=20, help="batch of the McMahan CNN (memory, time)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="secure runs; the fastest is shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_models(args.batch, args.cnn_batch, args.repeats)
    bench_matmul()
    bench_truncation()


if __name__ == "__main__":
    main()
