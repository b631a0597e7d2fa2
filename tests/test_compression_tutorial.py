"""The compression tutorial runs and shows what its page says it shows."""

from __future__ import annotations


def test_compression_tutorial_trades_bytes_for_little_accuracy(run_tutorial):
    stdout = run_tutorial("compression")
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in {"none", "qsgd", "random-mask", "topk", "low-rank"}:
            rows[parts[0]] = (float(parts[-2].rstrip("x")), float(parts[-1]))
    assert set(rows) == {"none", "qsgd", "random-mask", "topk", "low-rank"}, stdout
    assert rows["none"][0] == 1.0
    assert rows["qsgd"][0] == 16.0
    assert rows["random-mask"][0] == 4.0
    assert rows["topk"][0] > 40  # measured 45.8 (Rice-coded index gaps)
    baseline = rows["none"][1]
    assert baseline > 0.85
    for name in ("qsgd", "random-mask", "topk"):
        assert rows[name][1] > baseline - 0.03, name  # measured: within 0.02
    assert 9.5 < rows["low-rank"][0] < 10.5  # rank 20 of 200 rows, biases in full: 9.8x
    assert rows["low-rank"][1] > baseline - 0.04  # measured: 0.026 below, in 10 rounds
    stacks = {p[0]: p for p in map(str.split, stdout.splitlines()) if p and "," in p[0]}
    assert set(stacks) == {"random-mask,qsgd", "topk,qsgd"}, stdout
    for name, parts in stacks.items():  # measured: 63.8x and 64.1x, within 0.017
        assert float(parts[-2].rstrip("x")) > 60, name
        assert float(parts[-1]) > baseline - 0.03, name
    (downlink,) = [line for line in stdout.splitlines() if line.startswith("downlink 8 bits")]
    assert "4.0x fewer than float32" in downlink
    assert float(downlink.split()[-1]) > baseline - 0.02  # measured: within 0.002
    assert "refused: compressor = 'qsgd'" in stdout
    assert "keeps the clip norm" in stdout
