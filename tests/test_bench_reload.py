"""bench/bench_reload.py end to end: a real server, SIGHUP during open-loop traffic, the report's verdict."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_reload  # noqa: E402


@pytest.mark.skipif(not (ROOT / "models" / "manifest.json").exists(), reason="needs the shipped models")
def test_the_report_shows_the_reload_and_no_error(tmp_path: Path) -> None:
    out = tmp_path / "reload.md"
    assert bench_reload.main(["--models", "eczema-add,eczema-segment", "--rate", "40", "--seconds", "5",
                              "--hup-at", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert re.search(r"the reload took [\d.]+ s", text) and "| errors by status | none" in text
    assert "| 1 (SIGHUP) |" in text and "Target (nothing refused, the reload done): met." in text
