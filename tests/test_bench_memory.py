"""bench/bench_memory.py end to end: real servers, a small photograph, a row per budget, all answered."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_memory  # noqa: E402


@pytest.mark.skipif(not (ROOT / "models" / "manifest.json").exists(), reason="needs the shipped models")
def test_the_report_has_a_row_per_budget_and_concurrency(tmp_path: Path) -> None:
    out = tmp_path / "memory.md"
    assert bench_memory.main(["--budgets", "0", "0.05", "--concurrency", "2", "--size", "320x240",
                              "--port", "8398", "--out", str(out)]) == 0
    rows = re.findall(r"^\| (off \(0\)|0\.05) \| 2 \| (\d+) \| (\d+) \| (\d+) \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| "
                      r"[\d.]+ \| 200: 4 \|$", out.read_text(), re.M)
    assert [r[0] for r in rows] == ["off (0)", "0.05"]
    for _, warm, peak, grew in rows:
        assert int(peak) >= int(warm) > 100 and abs(int(grew) - (int(peak) - int(warm))) <= 1  # each rounded


@pytest.mark.skipif(not (ROOT / "models" / "manifest.json").exists(), reason="needs the shipped models")
def test_servers_can_run_under_a_memory_limit_as_in_a_container(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (bench_memory.MemoryCgroup.ROOT / "memory.limit_in_bytes").is_file():
        pytest.skip("needs root and a cgroup v1 memory controller")
    out = tmp_path / "memory.md"
    assert bench_memory.main(["--budgets", "0.05", "--concurrency", "2", "--size", "320x240", "--memory-limit", "1024",
                              "--port", "8399", "--out", str(out)]) == 0
    text = out.read_text()
    assert "in a memory cgroup limited to 1024 MiB" in text
    assert re.search(r"^\| 0\.05 \| 2 \| .* \| 200: 4 \| \d+ \| 0 \|$", text, re.M), text
    assert not list(bench_memory.MemoryCgroup.ROOT.glob("dermagan-bench-*"))  # removed after
