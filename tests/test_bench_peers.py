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
