"""bench/bench_stalls.py end to end: a real server, clients that stall, the report's table and counts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_stalls  # noqa: E402


@pytest.mark.skipif(sys.platform != "linux", reason="reads TCP_INFO")
def test_the_report_shows_every_stalled_connection_ended_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "stalls.md"
    assert bench_stalls.main(["--clients", "2", "--size", "1200", "--wait", "4", "--idle", "1",
                              "--trickle-every", "0.3", "--read-every", "0.5", "--head-mb", "4", "--out", str(out)]) == 0
    text = out.read_text()
    for scenario in ("unread", "silent", "trickle", "slow-upload", "slow-read", "big-head"):
        row = re.search(rf"^\| {scenario} \| (\d+) of 2 \| ([\d.]+) / ([\d.]+) \|", text, re.M)
        assert row and row[1] == "2" and float(row[3]) < 4, (scenario, text)
    assert "send_stalled 4, head_timeout 2, upload_stalled 2, head_too_large 2." in text, text
