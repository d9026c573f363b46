"""bench/bench_tls.py end to end, one short round: both arms start, only the listener answers plain HTTP, and the
report has both rows with their rates."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

pytest.importorskip("trustme", reason="needs trustme (the test extra)")

import bench_tls  # noqa: E402


def test_the_report_has_both_arms_and_only_the_listener_answers_plain_http(tmp_path: Path) -> None:
    out = tmp_path / "tls.md"
    assert bench_tls.main(["--rounds", "1", "--seconds", "1", "--procs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    listener = re.search(r"^\| listener \| HTTP/1.1 400 Bad Request \| (\d+) \|", text, re.M)
    loop = re.search(r"^\| loop TLS \| closed, no answer \| (\d+) \|", text, re.M)
    assert listener and loop and int(listener[1]) > 0 and int(loop[1]) > 0, text
    assert "New connections: listener / loop TLS = **" in text
