"""ModelRuntime without a server: its helpers, and SIGHUPs during the warm-up (on the fixture models)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_freeze_startup_objects_collects_garbage_first_then_freezes_the_rest() -> None:
    import gc
    import weakref

    from dermagan.service.runtime import freeze_startup_objects

    class Node:
        pass

    garbage, alive = Node(), Node()
    garbage.self = garbage  # a cycle: only the collector can free it
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup_objects()
        assert gone() is None  # collected, not frozen for the process's life
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # frozen objects are out of the collector's reach
    finally:
        gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())


def test_a_sighup_during_the_warm_up_reloads_once_it_is_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process: the warm-up runs in the background; SIGHUPs meanwhile (request_reload) are remembered as one
    reload, run when the warm-up ends; one that came before the folder was read asks for nothing."""
    import asyncio
    import threading
    import time

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


def test_a_folder_of_no_models_is_refused_and_alerted_series_start_at_zero(tmp_path: Path) -> None:
    """A manifest that lists no models passed --check, start-up and a reload (ready, /readyz 200, every work request
    503); a reload to it is refused now, the models loaded before serving on. The series deploy/alerts.yml takes
    increase() of exist at 0 before their first event (born at 1, that event never alerted)."""
    import asyncio
    import json

    from fixture_models import build_models

    from dermagan.service.metrics import Metrics
    from dermagan.service.runtime import ModelRuntime, StartupError
    from dermagan.service.settings import Settings

    build_models(tmp_path, only=("segment",))
    settings = Settings.from_env({}, models_dir=tmp_path, providers=("CPUExecutionProvider",), intra_op_threads=1,
                                 gc_freeze=False)
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    assert [value("dermagan_model_reloads_total", {"result": r}) for r in ("ok", "refused", "deferred")] == [0, 0, 0]
    runtime = ModelRuntime(settings, metrics)

    async def scenario() -> None:
        await runtime.load()
        await runtime.warm()
        assert value("dermagan_request_failures_total", {"model": "fixture-segment", "reason": "backend"}) == 0.0
        assert value("dermagan_request_failures_total", {"model": "fixture-segment", "reason": "deadline"}) == 0.0
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "models": []}))
        assert await runtime.reload() is False
        assert value("dermagan_model_reloads_total", {"result": "refused"}) == 1.0
        assert list(runtime.engines) == ["fixture-segment"]  # the models loaded before serve on
        await runtime.shutdown()

    asyncio.run(scenario())
    with pytest.raises(StartupError, match=r"manifest\.json lists no models: the service would serve nothing"):
        asyncio.run(ModelRuntime(settings, Metrics()).load())
