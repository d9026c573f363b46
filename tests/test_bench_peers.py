"""bench/bench_peers.py's targets: LitServe's counts at equal or lower p99, FastAPI's and the ceiling's at saturation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_peers  # noqa: E402


def _cell(server: str, level: int, rps: float, p99: float) -> dict:
    return {"server": server, "kind": "closed", "level": level, "ok_rps": rps, "p99_ms": p99}


# the closed-loop cells of bench/results/peers-2026-12-05c-amd-h2load.md (req/s, p99 ms)
ROWS = [_cell(s, c, r, p) for s, cells in {
    "dermagan": ((1, 133.8, 10.4), (4, 205.2, 32.2), (16, 251.5, 95.4), (64, 266.5, 285.5)),
    "dermagan-2w": ((1, 113.8, 11.7), (4, 265.2, 28.6), (16, 312.9, 100.2), (64, 334.5, 270.3)),
    "litserve": ((1, 101.6, 14.0), (4, 157.3, 38.0), (16, 208.6, 117.3), (64, 201.7, 392.5)),
    "fastapi": ((1, 162.5, 9.7), (4, 226.1, 34.9), (16, 186.7, 164.5), (64, 191.4, 551.2)),
}.items() for c, r, p in cells] + [{"server": "dermagan", "kind": "open", "level": 146.0, "ok_rps": 145.4, "p99_ms": 117.2}]
CEIL = {"min": 363.0, "serial": 243.0, "pipeline": {1: 300.0, 4: 378.0}}


def test_litserve_is_compared_at_equal_or_lower_p99_and_fastapi_and_the_ceiling_at_saturation() -> None:
    lines = bench_peers.targets(ROWS, CEIL)
    text = "\n".join(lines)
    # LitServe saturates at c=16 (208.6 req/s, p99 117.3 ms): our best cell under that p99 is c=16 for both
    assert ("dermagan-2w / litserve at equal or lower p99: dermagan-2w's best cell with p99 <= 117.3 ms (litserve's "
            "at its saturation, c=16) is c=16, 312.9 req/s at p99 100.2 ms: **1.50x** (target >= 1.2x: met)") in text
    assert "dermagan / litserve at equal or lower p99" in text and "is c=16, 251.5 req/s at p99 95.4 ms: **1.21x**" in text
    # saturation against saturation stays, for reference, without a verdict of its own
    assert "dermagan-2w / litserve saturation throughput: 334.5 / 208.6 = **1.60x** (for reference" in text
    assert "dermagan-2w / fastapi saturation throughput: 334.5 / 226.1 = **1.48x** (target >= 1.5x: NOT met)" in text
    assert "dermagan-2w / ceiling: 334.5 / 363 = **0.92x** (target >= 0.9x: met)" in text
    assert len(lines) == 2 * 4


def test_no_cell_under_litserves_p99_is_a_miss() -> None:
    rows = [_cell("dermagan", 64, 300.0, 500.0), _cell("litserve", 64, 200.0, 400.0)]
    text = "\n".join(bench_peers.targets(rows, CEIL))
    assert "no dermagan cell has p99 <= 400.0 ms (target >= 1.2x: NOT met)" in text


def _ceiling(r_ort: dict[int, float], r_codec: float) -> dict:
    best = max(r_ort.values())
    return {"r_ort": r_ort, "best_b": max(r_ort, key=r_ort.get), "r_codec": r_codec, "r_plan": 3000.0,
            "min": min(best, r_codec), "serial": 1 / (1 / best + 1 / r_codec), "single_ms": 1e3 / r_ort[1],
            "codec_ms": 1e3 / r_codec, "pipeline": {1: 300.0, 4: 380.0}, "pipeline_procs": 2}


def _report(ceil: dict) -> str:
    import argparse

    a = argparse.Namespace(image="gradient", threads=2, max_batch=2, max_delay_ms=2.0, duration=5.0, warmup=1.0, rounds=3)
    rows = [{**r, "rps_range": (r["ok_rps"], r["ok_rps"]), "p50_ms": 1.0, "p999_ms": r["p99_ms"], "mean_batch": 1.0,
             "errors": {}, "cpu_s": 1.0, "load1": 1.0} for r in ROWS]
    return bench_peers.report(a, {}, "fixture", 128, ceil, rows)


def test_the_ceiling_is_the_higher_of_the_two_measurements_around_the_servers() -> None:
    # the box slowed down while the servers ran (the afternoon's and the morning's R_ort on the Xeon, 2026-12-06)
    before, after = _ceiling({1: 486.0, 2: 549.0}, 924.0), _ceiling({1: 280.0, 2: 304.0}, 560.0)
    ceil = bench_peers.either_ceiling(before, after)
    assert ceil["min"] == 549.0 and ceil["chosen"] == "before" and ceil["mins"] == [549.0, 304.0]
    assert abs(ceil["drift"] - (549 / 304 - 1)) < 1e-12
    text = _report(ceil)
    assert "min() ceiling 549 and 304 req/s; the ratios below use the before one (the higher)" in text
    assert "**The box changed speed during this run** (the two 81 % apart)" in text
    assert "| R_ort images/s (before) | 486 | 549 |" in text and "| R_ort images/s (after) | 280 | 304 |" in text
    assert "dermagan-2w / ceiling: 334.5 / 549 = **0.61x** (target >= 0.9x: NOT met)" in text
    # faster afterwards: the after one; close measurements are not called a change of speed
    steady = bench_peers.either_ceiling(_ceiling({1: 330.0, 2: 350.0}, 900.0), _ceiling({1: 340.0, 2: 363.0}, 910.0))
    assert steady["chosen"] == "after" and steady["min"] == 363.0 and steady["drift"] is None
    assert "changed speed" not in _report(steady)
