"""service/batcher.py with fake run functions (no ONNX Runtime)."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import pytest

from dermagan.service.batcher import MicroBatcher
from dermagan.service.errors import BackendError, Cancelled, DeadlineExceeded, QueueFull, Unavailable


class FakeModel:
    """Doubles its input; records batch sizes; optionally slow or gated."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.gate: threading.Event | None = None

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.seconds)
        self.batches.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, np.float32)[:, None]}


async def started(model, **kw) -> MicroBatcher:
    b = MicroBatcher("m", model, **{"max_batch": 4, "max_delay_s": 0.0, "queue_size": 16, **kw})
    await b.start()
    return b


async def busy(**kw) -> tuple[FakeModel, MicroBatcher, asyncio.Future]:
    """A batcher whose executor is held busy by one running request until model.gate is set."""
    model = FakeModel()
    model.gate = threading.Event()
    b = await started(model, **{"max_batch": 1, **kw})
    running = asyncio.ensure_future(b.submit(rows(0), timeout_s=5))
    await asyncio.sleep(0.02)
    return model, b, running


def test_lone_request_runs_at_once_and_alone() -> None:
    async def main() -> None:
        model = FakeModel()
        b = await started(model, max_delay_s=3.0)  # the delay must not apply to an idle executor
        t0 = time.monotonic()
        out = await b.submit(rows(1.5), timeout_s=5)
        assert time.monotonic() - t0 < 1.5
        assert out["y"].tolist() == [[3.0]] and model.batches == [1]
        await b.stop(1)
    asyncio.run(main())


def test_requests_gather_while_busy_and_get_their_own_rows() -> None:
    async def main() -> None:
        model = FakeModel(seconds=0.05)
        b = await started(model, max_batch=4)
        outs = await asyncio.gather(*(b.submit(rows(float(i)), timeout_s=5) for i in range(9)))
        assert [o["y"][0, 0] for o in outs] == [2.0 * i for i in range(9)]
        assert sum(model.batches) == 9 and max(model.batches) == 4 and len(model.batches) < 9
        await b.stop(1)
    asyncio.run(main())


def test_a_job_larger_than_max_batch_is_split_and_reassembled() -> None:
    async def main() -> None:
        model = FakeModel()
        b = await started(model, max_batch=4)
        out = await b.submit(rows(*range(10)), timeout_s=5)
        assert out["y"][:, 0].tolist() == [2.0 * i for i in range(10)]
        assert model.batches == [4, 4, 2]
        await b.stop(1)
    asyncio.run(main())


def test_max_delay_waits_for_a_fuller_batch_under_load() -> None:
    async def main() -> None:
        model = FakeModel()
        model.gate = threading.Event()
        b = await started(model, max_batch=4, max_delay_s=0.2)
        first = asyncio.ensure_future(b.submit(rows(0), timeout_s=5))
        await asyncio.sleep(0.02)  # the executor is now busy (gated)
        second = asyncio.ensure_future(b.submit(rows(1), timeout_s=5))
        model.gate.set()
        await asyncio.sleep(0.05)  # the first batch is done; the second waits for company
        third = asyncio.ensure_future(b.submit(rows(2), timeout_s=5))
        await asyncio.gather(first, second, third)
        assert model.batches == [1, 2]
        await b.stop(1)
    asyncio.run(main())


def test_full_queue_is_refused_at_once() -> None:
    async def main() -> None:
        model, b, running = await busy(queue_size=2, retry_after_s=7)
        queued = [asyncio.ensure_future(b.submit(rows(i), timeout_s=5)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as e:
            await b.submit(rows(3), timeout_s=5)
        assert e.value.retry_after_s == 7 and e.value.status == 503
        model.gate.set()
        await asyncio.gather(running, *queued)
        await b.stop(1)
    asyncio.run(main())


def test_deadline_answers_on_time_and_the_job_never_runs() -> None:
    async def main() -> None:
        model, b, running = await busy()
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.submit(rows(1), timeout_s=0.1)
        assert time.monotonic() - t0 < 1.0  # the running request holds the executor until the gate opens
        assert b.depth == 0
        model.gate.set()
        await running
        await asyncio.sleep(0.05)
        assert model.batches == [1]
        await b.stop(1)
    asyncio.run(main())


def test_disconnected_request_is_dropped() -> None:
    async def main() -> None:
        model, b, running = await busy()
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(b.submit(rows(1), timeout_s=5, disconnected=gone))
        await asyncio.sleep(0.02)
        gone.set_result(None)
        with pytest.raises(Cancelled):
            await waiting
        model.gate.set()
        await running
        await asyncio.sleep(0.05)
        assert model.batches == [1]
        await b.stop(1)
    asyncio.run(main())


def test_wrong_row_count_out_is_a_backend_error() -> None:
    async def main() -> None:
        b = await started(lambda feeds: {"y": feeds["x"][:1]})
        await b.submit(rows(1), timeout_s=5)
        with pytest.raises(BackendError, match="inference failed"):
            await asyncio.gather(b.submit(rows(1, 2), timeout_s=5))
        await b.stop(1)
    asyncio.run(main())


def test_stop_drains_queued_work() -> None:
    async def main() -> None:
        model = FakeModel(seconds=0.02)
        b = await started(model, max_batch=1)
        jobs = [asyncio.ensure_future(b.submit(rows(i), timeout_s=5)) for i in range(5)]
        await asyncio.sleep(0)
        await b.stop(5)
        assert [j.result()["y"][0, 0] for j in jobs] == [0, 2, 4, 6, 8]
    asyncio.run(main())


def test_a_504_names_the_requests_whole_deadline_not_what_was_left_of_it() -> None:
    """A request that reaches the model with 0.2 s of its 30 s left: its 504 said "waited more than 0.2 s"
    before 2026-12-05, sending operators after a limit that does not exist."""
    async def main() -> None:
        model, b, running = await busy()
        with pytest.raises(DeadlineExceeded) as late:
            await b.submit(rows(1), timeout_s=0.2, deadline_s=30)
        assert late.value.status == 504
        assert re.fullmatch(r"the request did not finish within its 30 s deadline; it had waited 0\.2\d* s of it "
                            r"for model 'm'", late.value.detail), late.value.detail
        with pytest.raises(DeadlineExceeded, match="within its 0.1 s deadline"):  # without deadline_s: timeout_s
            await b.submit(rows(1), timeout_s=0.1)
        model.gate.set()
        await running
        await b.stop(1)
    asyncio.run(main())


def test_the_runtime_gives_the_batcher_the_request_timeout_setting_for_its_504() -> None:
    from dermagan.service.metrics import Metrics
    from dermagan.service.runtime import ModelRuntime
    from dermagan.service.settings import Settings

    async def main() -> None:
        model, b, running = await busy()
        runtime = ModelRuntime(Settings.from_env({"DERMAGAN_REQUEST_TIMEOUT_S": "25", "DERMAGAN_CODEC_THREADS": "1"}),
                               Metrics())
        engine = object()
        runtime._batcher_of[engine] = b  # type: ignore[index]
        try:
            with pytest.raises(DeadlineExceeded, match=r"within its 25 s deadline; it had waited 0\.1\d* s of it"):
                await runtime.infer(engine, rows(1), deadline=time.monotonic() + 0.1)  # type: ignore[arg-type]
        finally:
            runtime.codec.shutdown()
        model.gate.set()
        await running
        await b.stop(1)
    asyncio.run(main())


def test_the_drain_timeouts_503_carries_retry_after() -> None:
    """batcher.abort (the drain timeout passed): every 503 has DERMAGAN_RETRY_AFTER_S, this one had none."""
    async def main() -> None:
        model, b, running = await busy(retry_after_s=4)
        queued = asyncio.ensure_future(b.submit(rows(1), timeout_s=5))
        await asyncio.sleep(0.02)
        b.abort("the drain timeout passed")
        for job in (running, queued):  # the running one and the queued one
            with pytest.raises(Unavailable) as e:
                await job
            assert e.value.status == 503 and e.value.retry_after_s == 4, e.value
        model.gate.set()
        await b.stop(1)
    asyncio.run(main())
