"""Prometheus metrics, with exactly the names of the design notes' SERVING.md (seconds as the unit;
the list is in service/README.md, "Metrics").

One registry per app (so several apps in one process, as in tests, do not collide).

With `dermagan serve --workers N` the parent process sets PROMETHEUS_MULTIPROC_DIR (a private folder
in shared memory) before it starts the workers: prometheus_client then keeps every value in that
folder, and `/metrics` -- whichever worker answers it -- reports the sum over the workers (counters and
histograms of workers that have exited included; gauges of live workers only). Only metric values
are kept there; never request data.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dermagan.service.admission import pid_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# No `*_created` series (a gauge per counter and histogram child, holding its creation time): the workers of
# `--workers N` (multiprocess mode) have none, so without this one process exposed 7 more metric families
# than N workers, and every histogram's labels twice. Prometheus needs none of them for rate() or quantiles.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The shared metrics folder when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def _forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that died without saying so (killed, crashed): their
    in-flight and queue-depth gauges must not count any more. Counters and histograms stay."""
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids:
        if not pid_alive(pid):
            # two workers answering /metrics at once may both find the file; the second's remove then fails
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, path)


#: dermagan_worker_restarts_total: the supervisor of `--workers N` counts into the shared folder, the workers
#: (and one process, where it stays 0) declare it, so every exposition has the family
WORKER_RESTARTS = ("dermagan_worker_restarts", "Workers of `dermagan serve --workers N` that died and were "
                   "replaced (or are waiting to be: a worker that keeps dying is restarted ever later)")


def supervisor_restart_counter() -> Callable[[], None]:
    """For the supervisor, once it has set PROMETHEUS_MULTIPROC_DIR: a function that adds one to
    dermagan_worker_restarts_total in that folder (its own file, summed with the workers' by /metrics)."""
    from prometheus_client.values import MultiProcessValue

    name, doc = WORKER_RESTARTS
    value = MultiProcessValue()("counter", name, name + "_total", (), (), doc)
    return lambda: value.inc(1)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dermagan_requests_total", "HTTP requests by endpoint, model and status code",
                                ["endpoint", "model", "code"], registry=r)
        self.failures = Counter("dermagan_request_failures_total",
                                "Failed requests by model and reason (queue_full, deadline, cancelled, "
                                "too_large, invalid, backend, ...)", ["model", "reason"], registry=r)
        self.batch_size = Histogram("dermagan_batch_size", "Rows per inference batch", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_seconds = Histogram("dermagan_queue_seconds", "Time from queueing to the start of the "
                                       "request's first batch", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("dermagan_inference_seconds", "ONNX Runtime time per batch",
                                           ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("dermagan_request_seconds", "Whole-request time by endpoint",
                                         ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("dermagan_queue_depth", "Requests waiting in the model's queue", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.inflight = Gauge("dermagan_inflight_requests", "Work requests admitted and not yet answered "
                              "(admission control refuses more than DERMAGAN_MAX_INFLIGHT, all workers together)",
                              registry=r, multiprocess_mode="livesum")
        self.uploading = Gauge("dermagan_uploading_requests", "Work requests whose bodies are still arriving "
                               "(they hold no in-flight place; DERMAGAN_MAX_UPLOADS)", registry=r,
                               multiprocess_mode="livesum")
        self.image_pixels = Gauge("dermagan_image_pixels_inflight", "Pixels of uploaded images being worked on "
                                  "(the image budget, DERMAGAN_IMAGE_BUDGET_MP; a mask-free edit counts its "
                                  "blending memory as pixels)", registry=r,
                                  multiprocess_mode="livesum")
        self.connections = Gauge("dermagan_open_connections", "HTTP connections open now, each an open file (under "
                                 "httptools, `dermagan serve`'s default; over HTTPS from the end of the handshake)", registry=r, multiprocess_mode="livesum")
        self.reloads = Counter("dermagan_model_reloads", "Model reloads (SIGHUP), each process's own (one SIGHUP "
                               "to --workers N counts N), by result: ok, refused (the folder could not serve; the "
                               "models loaded before serve on), deferred (a SIGHUP during a warm-up or a reload: "
                               "one reload follows when that ends)", ["result"], registry=r)
        for result in ("ok", "refused", "deferred"):  # at 0 from the start: see ALERTED
            self.reloads.labels(result)
        self.worker_restarts = Counter(*WORKER_RESTARTS, registry=r)
        self.model_info = Gauge("dermagan_model_info", "1 for each served model, with its version and active "
                                "execution provider", ["model", "version", "provider"], registry=r,
                                multiprocess_mode="livemax")

    def observer(self, model: str) -> "ModelObserver":
        return ModelObserver(self, model)

    def render(self) -> tuple[bytes, str]:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        _forget_dead_workers(path)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path)
        return generate_latest(merged), CONTENT_TYPE_LATEST


#: failure reasons deploy/alerts.yml watches per model, whose series exist at 0 from the model's start: a counter
#: series born at its first event starts at 1, and `increase()` over samples that are all 1 is 0 -- the first
#: backend failure of a model (often the only one), or the first refused reload, never alerted
ALERTED = ("backend", "deadline")


class ModelObserver:
    """The batcher's BatchObserver for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        for reason in ALERTED:
            metrics.failures.labels(model, reason)
        self._batch = metrics.batch_size.labels(model)
        self._infer = metrics.inference_seconds.labels(model)
        self._queue = metrics.queue_seconds.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._failures = metrics.failures
        self._model = model

    def batch(self, rows: int, inference_s: float) -> None:
        self._batch.observe(rows)
        self._infer.observe(inference_s)

    def queued(self, wait_s: float) -> None:
        self._queue.observe(wait_s)

    def depth(self, jobs: int) -> None:
        self._depth.set(jobs)

    def dropped(self, reason: str) -> None:
        self._failures.labels(self._model, reason).inc()
