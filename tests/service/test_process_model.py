"""Pieces of the process model that need no server: the shared metrics folder's clean-up under a race, the
sweep of a killed supervisor's leftovers, a SIGHUP during the warm-up, the supervisor's restart backoff."""

from __future__ import annotations

import asyncio
import os
import threading
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


def test_the_sweep_removes_a_folder_named_after_its_own_pid(tmp_path: Path) -> None:
    """In a container the supervisor is always PID 1: a folder with our pid is an earlier supervisor's (the sweep
    runs before this one makes its own)."""
    from dermagan.service.cli import sweep_leftovers

    ours = tmp_path / f"dermagan-metrics-{os.getpid()}-abc"
    ours.mkdir()
    (tmp_path / f"dermagan-admission-{os.getpid()}-def").write_bytes(bytes(32))
    live = tmp_path / f"dermagan-admission-{os.getppid()}-ghi"  # another live process's
    live.write_bytes(b"")
    removed = sorted(Path(p).name for p in sweep_leftovers(str(tmp_path)))
    assert removed == [f"dermagan-admission-{os.getpid()}-def", f"dermagan-metrics-{os.getpid()}-abc"]
    assert live.exists()


def test_the_sweep_runs_before_the_supervisor_makes_its_own_files() -> None:
    import inspect

    from dermagan.service import cli

    source = inspect.getsource(cli._serve_workers)
    assert source.index("sweep_leftovers(base)") < source.index("_metrics_dir(base)") < source.index(
        "create_shared_file(")


def test_restart_delay_and_how_a_worker_ended() -> None:
    from dermagan.service.cli import how_it_ended, restart_delay

    assert [restart_delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert how_it_ended(-9) == "killed by SIGKILL" and how_it_ended(1) == "exit status 1"


def test_a_sighup_during_the_warm_up_reloads_once_it_is_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process: the warm-up runs in the background; SIGHUPs meanwhile (request_reload) are remembered as one
    reload, run when the warm-up ends; one that came before the folder was read asks for nothing."""
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).parent))
    from fixture_models import build_models

    from dermagan.service.engine import Engine
    from dermagan.service.metrics import Metrics
    from dermagan.service.runtime import ModelRuntime
    from dermagan.service.settings import Settings

    build_models(tmp_path)
    settings = Settings.from_env({}, models_dir=tmp_path, providers=("CPUExecutionProvider",), intra_op_threads=1,
                                 gc_freeze=False, models=("fixture-generate",))
    release = threading.Event()
    warm = Engine.warm
    monkeypatch.setattr(Engine, "warm", lambda self: (release.wait(10), warm(self)))
    metrics = Metrics()
    runtime = ModelRuntime(settings, metrics)

    def count(result: str) -> float:
        return metrics.registry.get_sample_value("dermagan_model_reloads_total", {"result": result}) or 0.0

    async def scenario() -> None:
        before = time.monotonic()
        await runtime.load()
        runtime.request_reload(before)  # (a SIGHUP before the lifespan, recorded then): the load read the folder after it
        warming = asyncio.create_task(runtime.warm())
        await asyncio.sleep(0)
        assert await runtime.reload() is False  # not now: deferred
        runtime.request_reload()
        assert count("deferred") == 2 and count("ok") == 0
        first = runtime.engines["fixture-generate"]
        release.set()
        await warming
        assert runtime.ready
        while count("ok") < 1:
            await asyncio.sleep(0.01)
        assert runtime.engines["fixture-generate"] is not first
        await asyncio.sleep(0.1)
        assert count("ok") == 1  # the two signals made one reload
        await runtime.shutdown()

    asyncio.run(scenario())
