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
