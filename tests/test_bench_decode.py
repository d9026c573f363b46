"""bench/bench_decode.py: one small photograph in each upload kind, both decoders, the same pixels."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_decode  # noqa: E402


def test_the_report_has_every_upload_decoded_fast_and_alike(tmp_path: Path) -> None:
    out = tmp_path / "decode.md"
    assert bench_decode.main(["--sizes", "96x64", "--rounds", "2", "--budget", "0.01", "--out", str(out)]) == 0
    rows = re.findall(r"^\| 96x64 \| (.+?) \| \d+ \| (yes|no) \| (yes|NO) \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", out.read_text(), re.M)
    assert rows == [(name, "yes", "yes") for name in ("JPEG q92", "PNG (Pillow's writer)", "PNG (the service's writer)")]
