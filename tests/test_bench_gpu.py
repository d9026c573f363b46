"""bench/bench_gpu.py, dry run on the CPU provider: every column and the parity table, so the script
still works when a GPU is next at hand (device time is scarce; a broken script wastes it)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "service"))

import bench_gpu  # noqa: E402
from fixture_models import build_models  # noqa: E402


def test_dry_run_reports_every_model_batch_and_parity(tmp_path: Path) -> None:
    models = tmp_path / "models"
    entries = build_models(models, only=("generate", "add"))
    out = tmp_path / "gpu.md"
    assert bench_gpu.main(["--models-dir", str(models), "--provider", "CPUExecutionProvider", "--batches", "1,2",
                           "--cpu-batches", "1", "--min-s", "0.01", "--out", str(out)]) == 0
    text = out.read_text()
    for e in entries:
        rows = [line for line in text.splitlines() if line.startswith(f"| {e.name} |")]
        assert len(rows) == 3, text  # batches 1 and 2, then the parity row
        batch1, batch2, parity = rows
        assert batch1.split("|")[3].strip().isdigit() and batch2.split("|")[3].strip() == "-"  # cpu column: batch 1 only
        assert "|" in parity and "CPUExecutionProvider" in parity
        assert float(parity.split("|")[2]) == 0.0  # the same provider twice: identical outputs


def test_without_the_provider_it_says_so(tmp_path: Path, capsys) -> None:
    assert bench_gpu.main(["--models-dir", str(tmp_path), "--provider", "NoSuchExecutionProvider"]) == 2
    assert "has no NoSuchExecutionProvider" in capsys.readouterr().err


def test_gpu_checks_script_logs_every_step_and_skips_what_it_is_told(tmp_path: Path) -> None:
    """bench/gpu-checks.sh on a machine without a GPU: the steps that need none run and are logged, SKIP
    leaves the others out, an unknown part is refused."""
    import os
    import subprocess

    gpu_steps = "bare_session engine bench_gpu service_cuda service_cuda_4w service_cuda_codec4 service_cpu"
    env = {**os.environ, "PYTHON": sys.executable, "SKIP": gpu_steps}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu-checks.sh"), "serve", str(tmp_path / "out"), str(ROOT / "models")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "providers: rc 0" in log and "CPUExecutionProvider" in log
    assert all(f"== {s}: skipped (SKIP)" in log for s in gpu_steps.split())
    assert subprocess.run(["bash", str(ROOT / "bench" / "gpu-checks.sh"), "nonsense", str(tmp_path / "x")],
                          capture_output=True, text=True).returncode == 2
