"""The served models: manifest -> engines -> batchers, their readiness, and which model serves what.

`load()` verifies the manifest (missing file, sha256 mismatch, unknown model name -> refuse to
start, naming the file) and opens every session; `warm()` runs every batch bucket and then turns
the service ready; `shutdown()` drains the batchers. `reload()` (SIGHUP) swaps in the models folder as
it is now -- verified, opened and warmed beside the serving models, which answer meanwhile -- and
retires the old batchers once no request can still reach them. `request_reload()` is SIGHUP's entry:
a signal that comes while the models warm up or another reload runs is remembered (one pending reload
stands for any number of them) and run when that ends, so the folder is read after the last signal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dermagan.cpus import affinity_cores, cgroup_cpu_limit, usable_cores
from dermagan.manifest import Manifest, ModelEntry, load_manifest, most_specific
from dermagan.service import pipeline
from dermagan.service.batcher import MicroBatcher
from dermagan.service.budget import Abandoned, PixelBudget
from dermagan.service.engine import Engine
from dermagan.service.errors import (Cancelled, DeadlineExceeded, InvalidParameter, ModelUnavailable, NotReady,
                                     Unavailable)
from dermagan.service.metrics import Metrics
from dermagan.service.settings import Settings
from dermagan.service.threadnames import name_os_thread

log = logging.getLogger("dermagan.service")

Arrays = dict[str, np.ndarray]
T = TypeVar("T")

# The codec work of the current request (its image_budget block) still running after its caller was answered
# 504: a thread cannot be stopped, so the request's pixels stay held until that work ends.
_OUTLIVING: ContextVar[list[Future[Any]] | None] = ContextVar("dermagan_outliving_codec_work", default=None)


class StartupError(RuntimeError):
    """The service cannot start: the message names the file or setting at fault."""


class StartupRefusal(logging.Filter):
    """uvicorn logs a failed start-up as the whole traceback of the lifespan (~35 lines of Starlette and
    asyncio frames). When the failure is the service's own refusal -- a StartupError, whose message says
    what is wrong and where -- the log keeps that message alone: `cannot start: ...`."""

    MARK = f"{StartupError.__module__}.{StartupError.__qualname__}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Traceback") and self.MARK in record.msg:
            record.msg, record.args = "cannot start: " + record.msg.rsplit(self.MARK, 1)[1].strip(), ()
        return True


def quiet_startup_refusals() -> None:
    """Attach StartupRefusal to uvicorn's error logger, once per process (a worker attaches its own)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, StartupRefusal) for f in logger.filters):
        logger.addFilter(StartupRefusal())


def freeze_startup_objects() -> None:
    """Move every object alive now (the app, its routes and schemas, the sessions' wrappers, imported
    modules: ~75,000 here) out of the garbage collector's reach for the process's life.

    They live as long as the process anyway, and without this each full (generation-2) collection
    walks all of them: ~20-40 ms on this 2-core box, in the event loop, so every request waiting there
    gets that much later. Requests still allocate and free their own objects as before; only the
    collections get short. What is garbage now is collected first, so nothing is frozen in vain.
    """
    gc.collect()
    gc.freeze()
    log.info("garbage collector: %d start-up objects frozen", gc.get_freeze_count())


def no_models(models_dir: Path) -> str:
    """The refusal of a manifest that lists no models: ready and serving nothing, it passed every check, start-up,
    a reload and the probes, while every work request got 503 and no alert fired."""
    return (f"{models_dir / 'manifest.json'} lists no models: the service would serve nothing (`dermagan export RUN "
            f"--out {models_dir}` adds one)")


class ModelRuntime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engines: dict[str, Engine] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.warmed: set[str] = set()
        self.ready = False
        self.warm_error: str | None = None
        self.draining = False
        self.draining_since = 0.0  # time.monotonic() when SIGTERM came
        self._loop: asyncio.AbstractEventLoop | None = None
        # decode / pre- / post-processing / PNG encode: one pool sized to the cores (not the event
        # loop's default 40 threads), so image work cannot oversubscribe the CPU under a surge
        self.codec = ThreadPoolExecutor(max_workers=settings.codec_workers, thread_name_prefix="codec",
                                        initializer=name_os_thread)
        self.pixels = PixelBudget(settings.process_image_budget, metrics.image_pixels.set)
        self._batcher_of: dict[Engine, MicroBatcher] = {}  # a request runs on the batcher of the engine it chose
        self._reloading = False
        self._reload_pending = False  # a SIGHUP came during a warm-up or a reload: one reload once it ends
        self._folder_read_at: float | None = None  # time.monotonic() when the models folder was last read
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._shut = False
        self._retiring: set[asyncio.Task[None]] = set()

    # ---- lifecycle -----------------------------------------------------------------------

    def _entries(self) -> list[ModelEntry]:
        from dermagan.manifest import ManifestError

        try:
            manifest = load_manifest(self.settings.models_dir, verify=True)
        except ManifestError as e:
            raise StartupError(str(e)) from e
        if not manifest.models:  # it would answer /readyz 200 and every work request 503: refused (a reload too)
            raise StartupError(no_models(self.settings.models_dir))
        if not self.settings.models:
            return list(manifest.models)
        known = [m.name for m in manifest.models]
        unknown = [n for n in self.settings.models if n not in known]
        if unknown:
            raise StartupError(f"DERMAGAN_MODELS names {unknown}, which {self.settings.models_dir}/manifest.json "
                               f"does not have; it has {known}")
        return [manifest.get(n) for n in self.settings.models]

    def _open(self) -> None:
        s = self.settings
        limit = cgroup_cpu_limit()
        log.info("CPU: %d cores usable (affinity %d, cgroup quota %s), %d per worker of %d: ORT intra-op threads %d "
                 "per model, codec threads %d", usable_cores(), affinity_cores(),
                 "none" if limit is None else f"{limit:g} CPUs", s.cores_per_worker, s.workers, s.ort_threads,
                 s.codec_workers)
        # the admission limits in force, computed ones included (before, only a 503's detail showed one)
        budget = f"{s.image_budget_mp:g} MP ({s.process_image_budget / 1e6:g} MP this worker)" if s.image_budget_mp \
            else "unbounded"
        log.info("limits: %d work requests in flight (DERMAGAN_MAX_INFLIGHT%s), %d uploads this worker "
                 "(DERMAGAN_MAX_UPLOADS), %d queued per model (DERMAGAN_QUEUE_SIZE), image budget %s "
                 "(DERMAGAN_IMAGE_BUDGET_MP), batches up to %d (DERMAGAN_MAX_BATCH), %g s a request "
                 "(DERMAGAN_REQUEST_TIMEOUT_S)", s.inflight_limit, "" if s.max_inflight else ": queue + 2 x codec "
                 "threads x workers", s.process_upload_limit, s.queue_size, budget, s.max_batch, s.request_timeout_s)
        self.engines = self._open_engines()

    def _open_engines(self) -> dict[str, Engine]:
        """An engine for every model the manifest (verified) and DERMAGAN_MODELS name. Raises StartupError."""
        from dermagan.service.engine import EngineError

        s, engines = self.settings, {}
        for entry in self._entries():
            try:
                engine = Engine(entry, s.models_dir / entry.file, providers=s.providers,
                                intra_op_threads=s.ort_threads, buckets=s.buckets, spinning=s.ort_spinning)
            except EngineError as e:
                raise StartupError(str(e)) from e
            engines[entry.name] = engine
            log.info("model %s (%s, v%s) loaded from %s on %s", entry.name, entry.task, entry.version,
                     entry.file, engine.provider)
        return engines

    async def _start_batchers(self, engines: dict[str, Engine]) -> dict[str, MicroBatcher]:
        s, batchers = self.settings, {}
        for name, engine in engines.items():
            batcher = MicroBatcher(name, engine.run, max_batch=s.max_batch, max_delay_s=s.max_delay_ms / 1000,
                                   queue_size=s.queue_size, retry_after_s=s.retry_after_s,
                                   observer=self.metrics.observer(name))
            await batcher.start()
            batchers[name] = batcher
            self._batcher_of[engine] = batcher
        return batchers

    def _publish(self, engines: dict[str, Engine], value: float) -> None:
        for name, engine in engines.items():
            self.metrics.model_info.labels(name, engine.entry.version, engine.provider).set(value)

    async def load(self) -> None:
        """Open every model (in a thread) and start its batcher. Raises StartupError."""
        self._loop = asyncio.get_running_loop()
        self._folder_read_at = time.monotonic()
        await asyncio.to_thread(self._open)
        self._publish(self.engines, 1)
        self.batchers = await self._start_batchers(self.engines)

    async def reload(self) -> bool:
        """Serve the models folder as it is now (SIGHUP): its manifest verified, every model opened and
        warmed in threads while the current models keep answering, then swapped in at once. The old
        models' batchers take no new work once every request that could have chosen them is past its
        deadline (DERMAGAN_REQUEST_TIMEOUT_S), then finish what they hold. False, with the reason
        logged and the current models serving on, when the folder cannot serve, or when a drain is under
        way; while a warm-up or another reload runs, it is deferred (request_reload) and False."""
        if self.draining or self._shut or self._busy():
            self.request_reload()
            return False
        self._reloading = True
        try:
            t0 = time.perf_counter()
            self._folder_read_at = time.monotonic()
            log.info("reload: opening the models of %s beside the serving ones", self.settings.models_dir)
            try:
                engines = await asyncio.to_thread(self._open_engines)
                if self.settings.warmup:
                    for engine in engines.values():
                        await asyncio.to_thread(engine.warm)
            except Exception as e:  # StartupError names the file; a model that cannot run its zeros must not serve
                self.metrics.reloads.labels("refused").inc()
                log.error("reload refused, the models loaded before keep serving: %s", e)
                return False
            if self.draining:  # SIGTERM came meanwhile: the new models would serve nobody
                log.info("reload dropped: the service began to drain")
                return False
            old_engines, old_batchers = self.engines, self.batchers
            batchers = await self._start_batchers(engines)
            self.engines, self.batchers, self.warmed = engines, batchers, set(engines)  # one step of the loop
            if not self.ready:  # the warm-up had failed (warm_error): these models ran their zeros, they serve
                self.ready, self.warm_error = True, None
            self._publish(old_engines, 0)
            self._publish(engines, 1)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded in %.1f s: %s (were %s)", time.perf_counter() - t0,
                     ", ".join(f"{n} v{e.entry.version} {e.entry.sha256[:12]}" for n, e in engines.items()),
                     ", ".join(f"{n} v{e.entry.version}" for n, e in old_engines.items()))
            retiring = asyncio.get_running_loop().create_task(self._retire(old_engines, old_batchers), name="retire")
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
            return True
        finally:
            self._reloading = False
            self._run_pending()

    def _busy(self) -> bool:
        """A reload now would race one under way, or the first warm-up (which has not ended, well or not)."""
        return self._reloading or (not self.ready and self.warm_error is None)

    def request_reload(self, signalled_at: float | None = None) -> None:
        """SIGHUP (app.reload_on_sighup): reload now, or once the warm-up or the reload under way ends -- then
        the folder is read after this signal. Counted `deferred` in dermagan_model_reloads_total; one pending
        reload stands for any number of signals. `signalled_at` (time.monotonic()): a signal that came before
        the serving models' folder was read (a SIGHUP before the lifespan began) asks for nothing they lack.
        Ignored while draining. Runs on the event loop."""
        if self.draining or self._shut:
            log.warning("reload ignored: the service is draining")
            return
        if signalled_at is not None:
            if self._folder_read_at is not None and signalled_at < self._folder_read_at:
                log.info("SIGHUP during start-up, before the models folder was read: it serves the folder as it "
                         "is, no reload needed")
                return
            log.info("SIGHUP during start-up, after the models folder was read: a reload follows")
        if self._busy():
            self.metrics.reloads.labels("deferred").inc()
            if self._reload_pending:
                log.info("reload deferred: one is already pending")
            else:
                log.warning("reload deferred: %s; it runs when that ends", "a reload is under way" if self._reloading
                            else "the models are warming up")
            self._reload_pending = True
            return
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def reloads_done(self) -> None:
        """Until no reload runs or is pending (those SIGHUPs asked for during the warm-up): a worker that
        warms before it listens starts to serve with the folder's newest models, not its siblings' old ones."""
        while self._reload_tasks:
            await asyncio.gather(*list(self._reload_tasks), return_exceptions=True)

    def _run_pending(self) -> None:
        """The reload a SIGHUP asked for during the warm-up or reload that just ended."""
        if not self._reload_pending or self._shut:
            return
        self._reload_pending = False
        if self.draining:
            log.info("pending reload dropped: the service began to drain")
            return
        log.info("reload: running the one deferred by a SIGHUP")
        self.request_reload()

    async def _retire(self, engines: dict[str, Engine], batchers: dict[str, MicroBatcher]) -> None:
        await asyncio.sleep(self.settings.request_timeout_s + 1)  # every request that chose them is past its deadline
        await asyncio.gather(*(b.stop(self.settings.drain_timeout_s) for b in batchers.values()))
        for engine in engines.values():
            self._batcher_of.pop(engine, None)
        log.info("retired the models replaced by the reload: %s", ", ".join(engines))

    async def warm(self) -> None:
        """Run every bucket of every model once, then become ready; then run a reload a SIGHUP asked for
        meanwhile. Stops early when a drain begins (a worker warms before it listens)."""
        try:
            await self._warm()
        finally:
            if not self._shut:
                self._run_pending()

    async def _warm(self) -> None:
        try:
            for name, engine in self.engines.items():
                if self.draining:
                    log.info("warm-up stopped: the service is draining")
                    return
                if self.settings.warmup:
                    t0 = time.perf_counter()
                    await asyncio.to_thread(engine.warm)
                    log.info("model %s warmed (batches %s) in %.2f s", name, list(engine.buckets), time.perf_counter() - t0)
                self.warmed.add(name)
        except Exception as e:  # a model that cannot run its own zeros must not serve
            self.warm_error = f"warm-up failed: {type(e).__name__}: {e}"
            log.exception("warm-up failed; the service stays not ready")
            return
        if self.settings.gc_freeze:
            freeze_startup_objects()
        self.ready = True
        log.info("ready: %d model%s (%s)", len(self.engines), "" if len(self.engines) == 1 else "s",
                 ", ".join(f"{n} v{e.entry.version} {e.entry.sha256[:12]}" for n, e in self.engines.items()))

    def begin_drain(self) -> None:
        """Shutdown has begun (SIGTERM): refuse new work; after drain_timeout_s answer what is left
        with 503 so the server can exit in time. Safe to call from a signal handler."""
        if self._loop is None or self.draining:
            return
        self.draining_since = time.monotonic()
        self.draining = True
        log.info("draining: no new connections (a request on an open one gets 503); accepted work has %.1f s",
                 self.settings.drain_timeout_s)

        def abort_all() -> None:
            for b in set(self._batcher_of.values()):
                b.abort("the service is shutting down and its drain timeout passed before this request finished")

        self._loop.call_soon_threadsafe(self._loop.call_later, self.settings.drain_timeout_s, abort_all)

    async def shutdown(self) -> None:
        self._shut = True
        for task in list(self._retiring) + list(self._reload_tasks):  # (the retired batchers are stopped below)
            task.cancel()
        await asyncio.gather(*(b.stop(self.settings.drain_timeout_s) for b in set(self._batcher_of.values())))
        self.codec.shutdown(wait=False, cancel_futures=True)

    # ---- serving -------------------------------------------------------------------------

    def require_ready(self, arrived: float | None = None) -> None:
        """503 while warming up or draining; `arrived` (time.monotonic() of the request's arrival at the
        Gate): a request that arrived before the drain began was accepted, and is served -- its upload
        may have ended after SIGTERM."""
        if self.draining and (arrived is None or arrived >= self.draining_since):
            raise Unavailable("the service is shutting down; retry on another replica",
                              retry_after_s=self.settings.retry_after_s)
        if not self.ready:
            detail = self.warm_error or f"warming up: {len(self.warmed)} of {len(self.engines)} models ready"
            raise NotReady(detail, retry_after_s=self.settings.retry_after_s)

    def model_for(self, task: str, kind: str | None = None, name: str | None = None) -> Engine:
        """The first loaded model of `task` in the manifest's order; for generate, of those whose labels
        include `kind`, the one with the fewest labels (a one-kind generator before a shared one).
        `name` (the request's `model`) asks for one model instead: it must be loaded and serve the task
        (and draw the kind), else InvalidParameter naming the models that would."""
        found = [e.entry for e in self.engines.values() if e.entry.task == task]
        if name is not None:
            return self._named(name, task, kind, found)
        if kind is None:
            entry = found[0] if found else None
        else:
            entry = most_specific(found, kind)
        if entry is not None:
            return self.engines[entry.name]
        what = f"task {task!r}" + (f" with kind {kind!r}" if kind else "")
        served = sorted({e.entry.task for e in self.engines.values()})
        # 503 as ever, but without Retry-After: the models served are the configuration's (DERMAGAN_MODELS, the
        # models folder), so waiting does not bring one; a generic client then treats it as a 500 (RFC 9110 15.6.4)
        raise ModelUnavailable(f"no loaded model serves {what}; this service has models for {served} (its models "
                               "folder and DERMAGAN_MODELS decide: retrying will not help)")

    def defaults(self, name: str) -> list[str]:
        """What model `name` serves when a request names none: [its task], or a generator's kinds."""
        return Manifest(models=[e.entry for e in self.engines.values()]).serves_by_default(name)

    def _named(self, name: str, task: str, kind: str | None, found: list[ModelEntry]) -> Engine:
        fitting = [e.name for e in found if kind is None or kind in e.labels]
        need = f"task {task!r}" + (f" with kind {kind!r}" if kind else "")
        offer = f"the loaded models for {need} are {fitting}" if fitting else f"no loaded model serves {need}"
        engine = self.engines.get(name)
        if engine is None:
            raise InvalidParameter(f"model {name[:80]!r} is not loaded here; {offer}")
        if engine.entry.task != task:
            why = {"add": " (an edit with a mask)", "remove": " (an edit with a mask)",
                   "cycle-add": " (an edit without a mask)", "cycle-remove": " (an edit without a mask)"}.get(task, "")
            raise InvalidParameter(f"model {name!r} serves task {engine.entry.task!r}, but this request{why} needs "
                                   f"task {task!r}; {offer}")
        if kind is not None and kind not in engine.entry.labels:
            raise InvalidParameter(f"model {name!r} draws {engine.entry.labels}, not {kind!r}; {offer}")
        return engine

    async def infer(self, engine: Engine, inputs: Arrays, *, disconnected: asyncio.Future[Any] | None = None,
                    deadline: float | None = None, request_id: str = "") -> Arrays:
        """`inputs` run by `engine`'s batcher within what is left of the request's deadline (`deadline`,
        time.monotonic(); none: a whole DERMAGAN_REQUEST_TIMEOUT_S from now). A 504 names the request's
        deadline (DERMAGAN_REQUEST_TIMEOUT_S from its arrival), not what was left of it."""
        timeout = self.settings.request_timeout_s if deadline is None else max(deadline - time.monotonic(), 0.001)
        out: Arrays = await self._batcher_of[engine].submit(inputs, timeout_s=timeout, disconnected=disconnected,
                                                            request_id=request_id,
                                                            deadline_s=self.settings.request_timeout_s)
        return out

    @asynccontextmanager
    async def image_budget(self, image: bytes, *, deadline: float, model: str = "", pixels: int | None = None,
                           disconnected: asyncio.Future[Any] | None = None) -> AsyncIterator[None]:
        """Hold the pixels of `image` (from its header) in the image budget for the block; 504 when
        they are not free before the deadline, 499 when `disconnected` (the client's disconnect) completes
        first. An image over DERMAGAN_MAX_PIXELS takes none: the decoder refuses it at once (413), so a
        header declaring a huge image cannot hold the line. `pixels`: what to hold instead, where the work
        needs more than the image's own (pipeline.tiled_pixels: a mask-free edit's working memory, in such pixels)."""
        if pixels is None:
            pixels = pipeline.image_pixels(image, self.settings.max_pixels)
        waited_from = time.monotonic()
        try:
            held = await self.pixels.acquire(pixels, max(deadline - waited_from, 0.001), disconnected)
        except TimeoutError:
            self.metrics.failures.labels(model, "deadline").inc()
            raise DeadlineExceeded.waiting(
                self.settings.request_timeout_s, time.monotonic() - waited_from,
                f"the image budget (DERMAGAN_IMAGE_BUDGET_MP: {self.settings.image_budget_mp:g} megapixels in work at "
                "once) without its turn") from None
        except Abandoned:
            self.metrics.failures.labels(model, "cancelled").inc()
            raise Cancelled("the client disconnected while its request waited for the image budget") from None
        outliving: list[Future[Any]] = []
        token = _OUTLIVING.set(outliving)
        try:
            yield
        finally:
            _OUTLIVING.reset(token)
            self._release_after(held, outliving)

    def _release_after(self, held: int, work: list[Future[Any]]) -> None:
        """Give `held` pixels back to the budget now, or, where some of `work` (codec work that outlived its
        request's deadline) still runs, when the last of it ends: until then its image is still in memory."""
        running = [f for f in work if not f.done()]
        if not running:
            self.pixels.release(held)
            return
        ended = asyncio.gather(*(asyncio.wrap_future(f) for f in running), return_exceptions=True)
        ended.add_done_callback(lambda _: self.pixels.release(held))

    async def run_codec(self, fn: Callable[..., T], *args: Any, deadline: float, model: str = "",
                        **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the codec pool, within the request's deadline.

        Work still waiting for a codec thread when the deadline passes is never started (504), and
        the caller is answered 504 at the deadline even while the work runs (its result is dropped); work
        that runs on keeps its request's pixels in the image budget (`image_budget`) until it ends.
        """
        def guarded() -> T:
            if time.monotonic() > deadline:
                raise DeadlineExceeded("the request's deadline passed while it waited for a codec thread")
            return fn(*args, **kwargs)

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.metrics.failures.labels(model, "deadline").inc()
            raise DeadlineExceeded(f"the request took more than {self.settings.request_timeout_s:g} s "
                                   "before its image work started")
        future = self.codec.submit(guarded)
        try:
            async with asyncio.timeout(remaining):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            if not future.cancel():  # (not started yet: it never will be) running: its image is still in memory
                outliving = _OUTLIVING.get()
                if outliving is not None:
                    outliving.append(future)
            self.metrics.failures.labels(model, "deadline").inc()
            raise DeadlineExceeded(f"the request's image work did not finish within its "
                                   f"{self.settings.request_timeout_s:g} s deadline") from None
        except DeadlineExceeded:
            self.metrics.failures.labels(model, "deadline").inc()
            raise
