"""bench/bench_overload.py: each surge judged against the saturation measured around it, and a run in which the
box changed speed said to be one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_overload  # noqa: E402


def _phase(ok_rps: float, p50: float, p99: float, errors: dict | None = None) -> dict:
    return {"ok_rps": ok_rps, "p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 1.1, "errors": errors or {},
            "rejected_p99_ms": 9.0, "rejected_without_retry_after": 0, "rejected_checked": 0, "send_lag_p99_ms": 2.0}


def _surge(factor: float, sat_before: float, goodput: float) -> dict:
    """A surge as bench_overload.surge returns it (the figures of bench/results/overload-2026-12-06b-xeon-amx.md)."""
    return {"factor": factor, "rate": factor * sat_before, "sat_before": sat_before, "sat_after": sat_before,
            "goodput_ratio": goodput / sat_before, "rejected": 1000,
            "base": _phase(265.0, 14, 60), "during": _phase(goodput, 150, 300, {503: 1000}), "after": _phase(265.0, 12, 50),
            "rss_base": 380.0, "rss_peak": 395.0, "rss_growth": 0.04, "recovery_s": 0.0, "bound_ms": 80.0,
            "every_window_s": 1.0, "window_bound_ms": 80.0, "cpu_s": 140.0, "client_cpu_s": 5.0, "h2load_cpu_s": 0.0,
            "h2load_counts": {}, "p99_by_second": [50.0, 200.0, 40.0], "load1": 3.0,
            "checks": {"goodput >= 90 % of saturation": goodput / sat_before >= 0.9, "zero 500s": True}}


def _args(saturation: float = 0.0) -> argparse.Namespace:
    return argparse.Namespace(size=128, image="gradient", workers=2, url=None, threads=2, max_batch=8, max_delay_ms=2.0,
                              queue_size=64, request_timeout=30.0, keep_alive=5, gc_freeze=1, early_refusal=1,
                              log_level="warning", access_log_refusals="summary", client="raw", max_in_flight=1024,
                              surge_client="raw", h2load_clients=1024, saturation=saturation, baseline_seconds=10.0,
                              surge_seconds=60.0, recovery_seconds=15.0)


def test_a_surge_is_judged_against_the_larger_saturation_around_it() -> None:
    # measured 400 before, 480 after: 420 served a second is 88 % of 480, not 105 % of 400
    res = bench_overload.judge_goodput(_surge(2, 400.0, 420.0), 480.0)
    assert res["goodput_ratio"] == 420.0 / 480.0 and res["sat_after"] == 480.0
    assert res["checks"]["goodput >= 90 % of saturation"] is False
    # slower after (the box slowed down): still against the faster measurement before it, never flattered
    res = bench_overload.judge_goodput(_surge(5, 530.0, 378.9), 300.0)
    assert res["goodput_ratio"] == 378.9 / 530.0 and res["checks"]["goodput >= 90 % of saturation"] is False
    res = bench_overload.judge_goodput(_surge(5, 395.5, 371.1), 380.0)
    assert res["goodput_ratio"] == 371.1 / 395.5 and res["checks"]["goodput >= 90 % of saturation"] is True


def test_the_report_names_every_measurement_and_a_change_of_speed() -> None:
    results = [bench_overload.judge_goodput(_surge(2, 395.5, 401.9), 402.0),
               bench_overload.judge_goodput(_surge(5, 402.0, 371.1), 300.0)]
    text = bench_overload.report(_args(), {"cpu": "test"}, "fixture", [395.5, 402.0, 300.0], results)
    assert "measured before each surge and after the last: 395.5, 402.0, 300.0 req/s" in text
    assert "**The box changed speed during this run** (the measurements 34 % apart)" in text
    assert "| 2x | 395.5 / 402.0 | 791 | 401.9 | 100 % |" in text
    assert "| 5x | 402.0 / 300.0 | 2010 | 371.1 | 92 % |" in text
    # steady measurements: no such sentence; a given saturation is reported as given
    steady = bench_overload.report(_args(), {}, "fixture", [395.5, 402.0, 390.0], results)
    assert "changed speed" not in steady
    given = bench_overload.report(_args(400.0), {}, "fixture", [400.0, 400.0, 400.0], results)
    assert "- **saturation**: 400.0 req/s (given)" in given and "changed speed" not in given


def test_drift_is_the_spread_of_the_measurements_over_the_limit() -> None:
    assert bench_overload.load.drift([400.0, 450.0]) is None  # 12.5 %
    assert abs(bench_overload.load.drift([530.0, 300.0]) - (530 / 300 - 1)) < 1e-12
