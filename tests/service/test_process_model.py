"""Pieces of `dermagan serve --workers N` that need no server: the shared metrics folder's clean-up under a
race, the supervisor's restart backoff (the leftover sweep: test_admission.py; SIGHUPs during the warm-up:
test_runtime.py; with servers: tests/e2e/test_worker_lifecycle.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_two_workers_dropping_a_dead_workers_gauges_at_once_is_no_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Both find the dead worker's live-gauge file; the other one removes it between this one's glob and its
    remove (prometheus_client's mark_process_dead): /metrics must not become a 500."""
    from prometheus_client import multiprocess

    from dermagan.service import metrics

    dead = tmp_path / "gauge_livesum_999999.db"
    dead.write_bytes(b"")
    monkeypatch.setattr(metrics, "pid_alive", lambda pid: False)

    class RacingOs:  # os, but another worker removes each file just before this one does
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def remove(path: str) -> None:
            os.remove(path)  # the other worker
            os.remove(path)

    monkeypatch.setattr(multiprocess, "os", RacingOs())
    metrics._forget_dead_workers(str(tmp_path))
    assert not dead.exists()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    dead.write_bytes(b"")
    assert metrics.Metrics().render()[0] is not None  # the whole render, as /metrics does it


def test_restart_delay_and_how_a_worker_ended() -> None:
    from dermagan.service.cli import how_it_ended, restart_delay

    assert [restart_delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert how_it_ended(-9) == "killed by SIGKILL" and how_it_ended(1) == "exit status 1"
