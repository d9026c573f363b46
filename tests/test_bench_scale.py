"""bench/bench_scale.py end to end on the shipped models: one held-out 256 px image, its tables."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale  # noqa: E402


@pytest.mark.skipif(not (ROOT / "models" / "manifest.json").exists(), reason="needs the shipped models")
def test_the_report_compares_working_sizes_fades_and_masked_put_backs(tmp_path: Path) -> None:
    out = tmp_path / "scale.md"
    assert bench_scale.main(["--size", "256", "--n", "1", "--fades", "0", "12", "--out", str(out)]) == 0
    text = out.read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\d+)[^|]* \| (\d+) \|.*$", text, re.M)}
    assert set(rows) == {"128", "256"} and "(default)" in rows["128"] and "(native)" in rows["256"]
    assert re.search(r"^\| 128 \(default\) \| 1 \|", text, re.M)  # 256 px at 128: one tile
    assert re.search(r"^\| 256 \(native\) \| 9 \|", text, re.M)  # its own pixels: 3 x 3 tiles of 128
    for fade in ("0", "12"):
        assert re.search(rf"^\| {fade} \| \d+\.\d+ / \d+\.\d+ \| 0\.\d+ \|$", text, re.M)
    for variant in ("resized back alone", "all detail put back", "detail where the model changed < F = 12"):
        assert re.search(rf"^\| {re.escape(variant)}[^|]* \| \d+\.\d+ \| \d+\.\d+ \|$", text, re.M), variant
    # the shipped remover at the default brings the image closer to its healthy truth than it was
    default_psnr = float(re.search(r"^\| 128 \(default\) \| 1 \| (\d+\.\d+) /", text, re.M).group(1))
    input_psnr = float(re.search(r"the input itself against the healthy truth (\d+\.\d+)", text).group(1))
    assert default_psnr > input_psnr
