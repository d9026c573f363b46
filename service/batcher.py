"""The micro-batcher: one per model, between the HTTP handlers and one inference thread.

Semantics (the design notes' SERVING.md):
- a bounded queue of requests ("jobs"); a full queue answers `QueueFull` (503 + Retry-After) at once;
- an idle executor runs a lone request at once (no batching tax at low load); while it is busy,
  requests gather, and the next batch takes up to `max_batch` rows, waiting at most `max_delay_s`
  after its oldest request arrived for more;
- a job is rows (images, tiles, latents): a job larger than `max_batch` is split across batches,
  and rows of several jobs share a batch; N rows in = N rows out, checked;
- inference runs in one executor thread per model, never on the event loop;
- a request past its deadline is answered `DeadlineExceeded` (504) at the deadline, even while a
  batch runs, and is dropped before it runs; a request whose client disconnected is dropped too.

Inputs are decoded and validated before `submit`, so one bad upload never fails a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dermagan.service.errors import BackendError, Cancelled, DeadlineExceeded, QueueFull, Unavailable
from dermagan.service.threadnames import name_os_thread

log = logging.getLogger("dermagan.service")

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


class BatchObserver(Protocol):
    """What the batcher reports (metrics.py implements it)."""

    def batch(self, rows: int, inference_s: float) -> None: ...
    def queued(self, wait_s: float) -> None: ...
    def depth(self, jobs: int) -> None: ...
    def dropped(self, reason: str) -> None: ...


class _NullObserver:
    def batch(self, rows: int, inference_s: float) -> None: pass
    def queued(self, wait_s: float) -> None: pass
    def depth(self, jobs: int) -> None: pass
    def dropped(self, reason: str) -> None: pass


@dataclass(eq=False)
class _Job:
    inputs: Arrays  # every array [n, ...]
    n: int
    enqueued: float
    deadline: float
    future: asyncio.Future[Arrays]
    taken: int = 0  # rows handed to batches so far
    parts: list[Arrays] = field(default_factory=list)
    done_rows: int = 0
    request_id: str = ""  # named in the log when its batch fails
    deadline_s: float = 0.0  # the request's whole deadline, named in its 504


def rows_of(inputs: Arrays) -> int:
    sizes = {k: v.shape[0] for k, v in inputs.items()}
    if not sizes or len(set(sizes.values())) != 1 or next(iter(sizes.values())) < 1:
        raise ValueError(f"every input needs the same batch size >= 1, got {sizes}")
    return int(next(iter(sizes.values())))


class MicroBatcher:
    def __init__(self, name: str, run: RunFn, *, max_batch: int, max_delay_s: float, queue_size: int,
                 retry_after_s: int = 1, observer: BatchObserver | None = None) -> None:
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[_Job] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}",
                                            initializer=name_os_thread)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._running: list[_Job] = []  # jobs of the batch in the executor now

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop taking requests, finish the queued ones (up to the timeout), stop the thread."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
                self.abort("the service shut down before this request finished")
        self._executor.shutdown(wait=False)

    def abort(self, detail: str) -> None:
        """Answer every queued and running request now with 503 + Retry-After (the drain timeout has passed:
        another replica, or this one restarted, can serve it)."""
        self._closing = True
        for job in [*self._queue, *self._running]:
            if not job.future.done():
                job.future.set_exception(Unavailable(detail, retry_after_s=self.retry_after_s))
        self._queue.clear()
        if self._wake is not None:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    # ---- the request side ----------------------------------------------------------------

    async def submit(self, inputs: Arrays, *, timeout_s: float,
                     disconnected: asyncio.Future[Any] | None = None, request_id: str = "",
                     deadline_s: float | None = None) -> Arrays:
        """Queue `inputs` (rows along axis 0), wait for their outputs (same rows, same order), for at
        most `timeout_s` (what is left of the request's deadline).

        `disconnected` (owned by the caller) completes when the client goes away; `request_id` is
        named in the log if the batch fails; `deadline_s` (default `timeout_s`) is the request's whole
        deadline, counted from its arrival, which its 504 names -- `timeout_s` is only what was left of it.
        """
        n = rows_of(inputs)
        if self._closing or self._wake is None:
            raise Unavailable(f"model {self.name!r} is not taking requests (shutting down)",
                              retry_after_s=self.retry_after_s)
        if len(self._queue) >= self.queue_size:
            self._observer.dropped("queue_full")
            raise QueueFull(f"model {self.name!r} already has {self.queue_size} requests queued; "
                            f"retry after {self.retry_after_s} s", retry_after_s=self.retry_after_s)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        job = _Job(inputs, n, now, now + timeout_s, loop.create_future(), request_id=request_id,
                   deadline_s=timeout_s if deadline_s is None else deadline_s)
        self._queue.append(job)
        self._observer.depth(len(self._queue))
        self._wake.set()
        watcher = disconnected
        try:
            waiting: set[asyncio.Future[Any]] = {job.future} | ({watcher} if watcher else set())
            await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(job)
            raise
        if job.future.done():
            return job.future.result()
        self._abandon(job)
        if watcher is not None and watcher.done():
            self._observer.dropped("cancelled")
            raise Cancelled(f"the client disconnected before model {self.name!r} ran its request")
        self._observer.dropped("deadline")
        raise self._late(job, time.monotonic())

    def _late(self, job: _Job, now: float) -> DeadlineExceeded:
        """The 504 of a job whose deadline passed: the request's whole deadline, and how long of it was
        spent waiting for this model (the rest went on its upload and image work)."""
        return DeadlineExceeded.waiting(job.deadline_s, now - job.enqueued, f"model {self.name!r}")

    def _abandon(self, job: _Job) -> None:
        if not job.future.done():
            job.future.cancel()
        if job.taken == 0:
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            self._observer.depth(len(self._queue))

    # ---- the executor side ---------------------------------------------------------------

    def _pending_rows(self) -> int:
        return sum(j.n - j.taken for j in self._queue if not j.future.done())

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Pop up to max_batch rows from the queue's head, dropping dead jobs."""
        now = time.monotonic()
        batch: list[tuple[_Job, int, int]] = []
        space = self.max_batch
        while space and self._queue:
            job = self._queue[0]
            if job.future.done():  # abandoned (disconnect, deadline) or failed
                self._queue.popleft()
                continue
            if job.taken == 0 and now > job.deadline:
                self._queue.popleft()
                job.future.set_exception(self._late(job, now))
                self._observer.dropped("deadline")
                continue
            if job.taken == 0:
                self._observer.queued(now - job.enqueued)
            k = min(space, job.n - job.taken)
            batch.append((job, job.taken, job.taken + k))
            job.taken += k
            space -= k
            if job.taken == job.n:
                self._queue.popleft()
        self._observer.depth(len(self._queue))
        return batch

    def _timed_run(self, feeds: Arrays) -> tuple[Arrays, float]:
        t0 = time.perf_counter()
        out = self._run(feeds)
        return out, time.perf_counter() - t0

    async def _gather(self) -> None:
        """Under load: wait up to max_delay after the oldest queued request for a full batch."""
        if self.max_delay_s <= 0 or not self._queue:
            return
        assert self._wake is not None
        until = self._queue[0].enqueued + self.max_delay_s
        while self._pending_rows() < self.max_batch and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        busy = False  # True right after a batch: the executor was not idle when these jobs came
        while True:
            if not self._queue:
                if self._closing:
                    return
                busy = False
                self._wake.clear()
                await self._wake.wait()
                continue
            if busy:
                await self._gather()
            batch = self._take()
            if not batch:
                continue
            busy = True
            await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Job, int, int]]) -> None:
        keys = list(batch[0][0].inputs)
        feeds = {k: np.concatenate([job.inputs[k][a:b] for job, a, b in batch]) for k in keys}
        rows = sum(b - a for _, a, b in batch)
        self._running = [job for job, _, _ in batch]
        try:
            outputs, seconds = await loop.run_in_executor(self._executor, self._timed_run, feeds)
            bad = {k: v.shape[0] for k, v in outputs.items() if v.shape[0] != rows}
            if bad or not outputs:
                raise RuntimeError(f"{rows} rows in but output rows {bad or 'none'} out")
        except Exception as e:  # inputs were validated before queueing: this is the backend's fault
            log.exception("inference failed in model %s (batch of %d rows; request_id=%s)", self.name, rows,
                          ",".join(job.request_id or "-" for job, _, _ in batch))
            for job, _, _ in batch:
                if not job.future.done():
                    job.future.set_exception(BackendError(f"inference failed in model {self.name!r}: {type(e).__name__}"))
                self._observer.dropped("backend")
            return
        finally:
            self._running = []
        self._observer.batch(rows, seconds)
        offset = 0
        for job, a, b in batch:
            k = b - a
            job.parts.append({name: v[offset:offset + k] for name, v in outputs.items()})
            offset += k
            job.done_rows += k
            if job.done_rows == job.n and not job.future.done():
                parts = job.parts
                job.future.set_result(parts[0] if len(parts) == 1 else
                                      {name: np.concatenate([p[name] for p in parts]) for name in parts[0]})
