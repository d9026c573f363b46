"""bench/bench_formats.py end to end: a real server, one small photograph, every format answered."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_formats  # noqa: E402


@pytest.mark.skipif(not (ROOT / "models" / "manifest.json").exists(), reason="needs the shipped models")
def test_the_report_has_every_edit_and_format(tmp_path: Path) -> None:
    out = tmp_path / "formats.md"
    assert bench_formats.main(["--sizes", "200x150", "--rounds", "1", "--port", "8397", "--out", str(out)]) == 0
    rows = re.findall(r"^\| 200x150 \(.*?\) \| (/eczema/\w+ \(.*?\)) \| (\w+) \| .* \| (exact|\d+\.\d|inf) \| (\d+\.\d\d)x \|$",
                      out.read_text(), re.M)
    assert {(edit, fmt) for edit, fmt, _, _ in rows} == {
        (e, f) for e in ("/eczema/remove (mask)", "/eczema/add (no mask)") for f in ("png", "jpeg", "webp")}
    for _, fmt, db, ratio in rows:
        assert (db == "exact") == (fmt == "png") and (fmt != "png" or ratio == "1.00")
        assert fmt == "png" or float(db) > 30  # lossy, but the same picture
