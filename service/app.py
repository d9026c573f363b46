"""The HTTP surface: `create_app(settings=None)`, thin routers over `runtime` and `pipeline`.

Endpoints (as the design notes' ARCHITECTURE.md names them): POST /generate, /eczema/add, /eczema/remove,
/eczema/segment; GET /v1/models, /healthz, /readyz, /metrics, and the API's documentation: /docs (Swagger UI), /redoc and
/openapi.json, their scripts served from the package (fastapi-offline), never a CDN. Errors are
`errors.ServiceError`s mapped here, in one place, to `{"error": ..., "detail": ...}`.

Lifespan: the manifest is verified and every session opened before the server accepts connections
(any problem refuses to start, naming the file); warm-up then runs in the background while
/healthz is 200 and /readyz is 503 -- except in a worker of several on one port (DERMAGAN_WORKERS > 1),
which warms before it listens, so the kernel hands it no connection it would refuse; on shutdown
accepted work drains.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dermagan
from dermagan.allocator import limit_arenas
from dermagan.manifest import KINDS, LABEL_MAX_LEN, LABEL_PATTERN, LABEL_RULE
from dermagan.service import imaging, pipeline
from dermagan.service.admission import Admission, for_process
from dermagan.service.engine import Engine
from dermagan.service.errors import (BadRequest, Cancelled, DeadlineExceeded, HeadTimeout, HeadTooLarge, InvalidParameter,
                                    QueueFull, ServiceError, Unauthorized, UploadStalled)
from dermagan.service.metrics import Metrics
from dermagan.service.runtime import ModelRuntime, quiet_startup_refusals
from dermagan.service.settings import Settings
from dermagan.service.uploads import check_content_length, form_files, parse_multipart, receive_body

log = logging.getLogger("dermagan.service")
access_log = logging.getLogger("dermagan.access")

#: the health probes: never need the API key, and their 200s are not logged
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
#: the API's documentation (DERMAGAN_DOCS; "/" redirects to it): open without the API key, so a browser
#: can show it (it holds no data; Swagger UI's Authorize button then sends the key), and everything it
#: loads comes from here: an air-gapped site sees the pages, and no third party learns who reads them
DOCS_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})  # HTML: their answers carry DOCS_PAGE_POLICY
DOCS_PATHS = DOCS_PAGES | {"/", "/openapi.json"}
DOCS_ASSETS = "/docs/assets"
#: the documentation pages may load, connect to and show only what this service serves (ReDoc's bundle
#: would fetch its maker's logo from cdn.redoc.ly; Swagger UI and ReDoc need their inline scripts and styles,
#: data: images, Swagger UI blob: images (an answer's PNG) and ReDoc its blob: search worker)
DOCS_PAGE_POLICY = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                    b"img-src 'self' data: blob:; worker-src 'self' blob:; form-action 'self'; base-uri 'self'; "
                    b"frame-ancestors 'self'")
#: on answers made from a user's image (edits, masks): no cache -- a browser's on disk, a proxy's -- may keep them
PRIVATE = {"Cache-Control": "no-store"}
#: the requests that do image/model work: admission control counts these (never health, metrics, models)
WORK_PATHS = frozenset({"/generate", "/eczema/add", "/eczema/remove", "/eczema/segment"})
#: the lifespan-state key of Gate.refuse_early, read by shedding.SheddingHttpToolsProtocol
STATE_KEY = "dermagan.refuse_early"
#: the lifespan-state key of the ConnectionWatch, read by the same protocol
WATCH_KEY = "dermagan.connection_watch"
MAX_SEED = pipeline.MAX_SEED
T = TypeVar("T")
#: on every answer: browsers must take the Content-Type as given, never sniff an error's JSON (which can quote a
#: client's form field names) or an image as something else (OWASP's secure headers; Django sets it by default)
NOSNIFF = (b"x-content-type-options", b"nosniff")
NOSNIFF_LINE = NOSNIFF[0] + b": " + NOSNIFF[1] + b"\r\n"
#: CORS (DERMAGAN_CORS_ORIGINS): what a web page may send, and which answer headers its script may read
CORS_REQUEST_HEADERS = ("content-type", "x-api-key", "authorization", "x-request-id")
CORS_EXPOSED_HEADERS = ("x-request-id", "x-dermagan-model", "x-dermagan-model-sha256", "x-dermagan-seed", "retry-after")
#: a client's or load balancer's X-Request-ID that is echoed (a UUID, nginx's $request_id, AWS's
#: Root=1-...): visible ASCII without quote or backslash, so a log line cannot be forged with it
_GIVEN_REQUEST_ID = re.compile(rb"[!#-\[\]-~]{1,128}")


def request_id(headers: dict[bytes, bytes]) -> bytes:
    """The request's ID: its X-Request-ID where that is safe to echo and log, else a new random one."""
    given = headers.get(b"x-request-id")
    if given is not None and _GIVEN_REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex().encode("ascii")


def chain_drain_on_exit_signals(runtime: ModelRuntime) -> None:
    """Start the runtime's drain when SIGTERM / SIGINT arrive, then let the server's own handler run.

    Called from the lifespan, i.e. after uvicorn installed its handlers (uvicorn.Server.capture_signals,
    in one process or in each worker of `--workers N`); our drain clock starts with uvicorn's. Signal
    handlers can only be set from the main thread: an app driven by a test client on another thread
    keeps uvicorn's (or Python's) handlers as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):  # SIG_DFL / SIG_IGN: no server of ours is listening for it
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            runtime.begin_drain()
            previous(signum, frame)

        signal.signal(sig, handler)


def reload_on_sighup(runtime: ModelRuntime) -> None:
    """SIGHUP reloads the models in place (runtime.request_reload: new ones warmed beside the serving ones,
    then swapped; nothing refused meanwhile; during a warm-up or another reload, once that ends). In one
    process, or each worker of `--workers N`, whose supervisor forwards the signal (cli.py). Takes over from
    cli.hold_early_sighup's handler, and honours a SIGHUP that one recorded. Main thread only, as every
    signal handler."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return
    from dermagan.service.cli import take_early_sighup

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, runtime.request_reload)
    early = take_early_sighup()  # after the handler is ours: a signal now is either recorded there or ours
    if early is not None:
        runtime.request_reload(early)


# ---- HTTP mapping of errors (the one place) --------------------------------------------------

def error_response(exc: ServiceError, request_id: str = "") -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="dermagan"'
    return JSONResponse(error_body(exc.code, exc.detail, request_id), status_code=exc.status, headers=headers)


def _head_lines(answer: Response) -> bytes:
    """An answer's header lines as the HTTP protocol writes them, X-Content-Type-Options included."""
    return b"".join(k + b": " + v + b"\r\n" for k, v in answer.raw_headers) + NOSNIFF_LINE


def _request_id(request: Request) -> str:
    """The ID the Gate gave this request ("" outside the Gate)."""
    rid: str = request.scope.get("state", {}).get("request_id", "")
    return rid


def error_body(code: str, detail: str, request_id: str = "") -> dict[str, str]:
    """The JSON of every error: what went wrong, and the request's ID to quote (also in X-Request-ID)."""
    return {"error": code, "detail": detail, **({"request_id": request_id} if request_id else {})}


class ErrorBody(BaseModel):
    error: str = Field(examples=["invalid_image"])
    detail: str = Field(examples=["image: expected a PNG, JPEG, WebP or HEIC image, got a GIF image"])
    request_id: str = Field(examples=["4f6c1be0a3a94a3e8a0d2c5b7e9f1a20"],
                            description="the request's ID (its X-Request-ID): quote it when reporting a problem")


def _error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


# ---- request gate: API key, early 413, admission control, request metrics --------------------

async def _drain_body(receive: Receive, limit: int, timeout_s: float = 1.0) -> None:
    """Read and drop what is left of a refused request's body (bounded), so the client reads our
    answer instead of a connection reset. Under uvicorn this returns at once: after the response
    it discards the rest of the body itself and keeps the connection. `asyncio.timeout`, not
    `wait_for`: no task per call (a third of the Gate's CPU for a 503 went to that task)."""
    async def drain() -> None:
        size = 0
        while size <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    try:
        async with asyncio.timeout(timeout_s):
            await drain()
    except TimeoutError:
        pass


class Prebuilt:
    """An error answer rendered once, with MARK where the request ID goes, and sent many times: each
    send fills in its ID (visible ASCII without quote or backslash: nothing to escape in JSON) and
    its Content-Length."""

    MARK = "@request-id@"

    def __init__(self, response: Response) -> None:
        self.status = response.status_code
        self.headers = [(k, v) for k, v in response.raw_headers if k != b"content-length"]
        self.prefix, self.suffix = bytes(response.body).split(self.MARK.encode())

    def body(self, request_id: bytes) -> bytes:
        return self.prefix + request_id + self.suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: bytes = b"") -> None:
        body = self.body(request_id)
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [*self.headers, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


class _Replay:
    """`receive` for the app once the gate has read the body: the body as one message, then the client's
    own messages (so a disconnect still reaches the handlers)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is None:
            return await self.receive()
        body, self.body = self.body, None  # the gate keeps no reference: the handler's copy is the only one
        return {"type": "http.request", "body": body, "more_body": False}


#: after an answer that ends a connection while the client may still be sending (a 431, plain HTTP at the HTTPS
#: port), what is read and dropped before closing -- a close with bytes still arriving resets the connection, and
#: the client may lose the answer to it
LINGER_BYTES = 1 << 20
LINGER_S = 2.0


class ConnectionWatch(NamedTuple):
    """What the HTTP protocol (shedding.SheddingHttpToolsProtocol) watches on every connection, and whom it
    tells: the Gate, which counts and logs."""

    send_idle_s: float  # DERMAGAN_SEND_IDLE_S: an answer the client takes no byte of for this long is dropped
    head_timeout_s: float  # DERMAGAN_HEAD_TIMEOUT_S: a request head must arrive whole within this long
    answer_stalled: Callable[[dict[str, Any], tuple[str, int] | None, int | None], None]
    head_timed_out: Callable[[], tuple[bytes, bytes]]  # counts one; the 408 answer's head lines and body
    #: (client, the parser's reason, "tls" / "h2" / "" by the connection's first bytes) -> the 400 answer's head
    #: lines and body; counts and logs one
    not_http: Callable[[tuple[str, int] | None, str, str], tuple[bytes, bytes]]
    connections: Callable[[int], None]  # +1 when a connection opens, -1 when it closes
    max_head_bytes: int  # DERMAGAN_MAX_HEAD_BYTES: a request head over this is answered 431
    head_too_large: Callable[[], tuple[bytes, bytes]]  # counts one; the 431 answer's head lines and body


#: While work is refused at arrival, the access log writes the first refusal of each such second in full and one
#: line counting the others (DERMAGAN_ACCESS_LOG_REFUSALS=summary, the default)
REFUSALS_LOG_EVERY_S = 1.0


class FoldedRefusals:
    """The access lines of 503 `queue_full` refusals during an overload, folded: the first of a second is
    written in full, the others of that second are counted and written as one line when it ends (a timer on
    the event loop; `flush` at shutdown). An overload is mostly such refusals -- ~1,900 a second at 5x the
    saturation of the 2-core benchmark box -- and a line each cost the event loop about as much as the refusal itself
    (bench/results/refusal-log-2026-12-06-amd.md), and sent as many lines a second down the log pipeline.
    The requests stay counted one by one in `dermagan_requests_total` and `dermagan_request_failures_total`,
    and every answer carries its own X-Request-ID. Runs on the event loop's thread only."""

    def __init__(self, every_s: float, write: Callable[[int, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._write = write  # (refusals folded, seconds since the window's first) -> the summary line
        self._since = 0.0
        self._until = float("-inf")
        self.folded = 0
        self._timer: asyncio.TimerHandle | None = None

    def first(self) -> bool:
        """For one refusal: True when its own line is to be written (the first of its second), else counts it."""
        now = self.clock()
        if now >= self._until:
            self.flush()
            self._since, self._until = now, now + self.every_s
            return True
        self.folded += 1
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._until - now, self.flush)
            except RuntimeError:  # no running loop (called from a test): the next window or flush() writes it
                pass
        return False

    def flush(self) -> None:
        """Write the count of the refusals folded so far, if any, and end the window: the next refusal's line is
        written in full (the loop's timer may fire a little before the window's end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._until = min(self._until, self.clock())
        if self.folded:
            count, self.folded = self.folded, 0
            self._write(count, self.clock() - self._since)


class Gate:
    """Pure ASGI middleware: API key, early 413, admission control, request metrics.

    Admission control, in two steps. A work request (WORK_PATHS) first uploads its body: at most
    `upload_limit` at once in this process (DERMAGAN_MAX_UPLOADS, each worker its share), within the
    request's deadline. Then it takes one of `admission.limit` places (all the workers together, see
    admission.py) until the end of its answer. So a slow upload -- a phone on a poor network, or a
    client that opens connections and sends nothing -- holds an upload place, not an in-flight one,
    and cannot keep the models idle while others are refused (before, 68 connections that had sent
    only a request head turned every other client away for the 30 s deadline). While either count
    is full, a request is answered 503 `queue_full` + Retry-After before its body is read or its
    image decoded (milliseconds, no thread involved); a request whose upload ends while the in-flight
    places are full gets the same answer then. An overload is mostly such answers, so those are
    built once (their text names only settings) and their metric children are looked up once.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, endpoints: frozenset[str],
                 admission: Admission, registry: dict[str, Any] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.endpoints = endpoints
        self.keys = settings.api_keys  # (), or the keys any of which a request may carry
        self.admission = admission
        self.queue_full = QueueFull(f"the service already has {admission.limit} "
                                    f"request{'' if admission.limit == 1 else 's'} in progress "
                                    f"(DERMAGAN_MAX_INFLIGHT); retry after {settings.retry_after_s} s",
                                    retry_after_s=settings.retry_after_s)
        self._queue_full_response = Prebuilt(error_response(self.queue_full, Prebuilt.MARK))
        self.upload_limit = settings.process_upload_limit
        self.uploading = 0  # this process's work requests whose bodies are still arriving
        self._uploads_full_response = Prebuilt(error_response(QueueFull(
            f"the service already receives {self.upload_limit} uploads (DERMAGAN_MAX_UPLOADS, this worker's "
            f"share); retry after {settings.retry_after_s} s", retry_after_s=settings.retry_after_s), Prebuilt.MARK))
        self._queue_full_count = metrics.failures.labels("", self.queue_full.reason)
        self._children: dict[tuple[str, ...], Any] = {}
        self._refusal_lines = (FoldedRefusals(REFUSALS_LOG_EVERY_S, self._log_folded)
                               if settings.access_log_refusals == "summary" else None)
        self._queue_full_head = b"".join(k + b": " + v + b"\r\n" for k, v in self._queue_full_response.headers) + NOSNIFF_LINE
        self._work_targets = {p.encode(): p for p in WORK_PATHS if p in endpoints}
        if registry is not None:
            registry["gate"] = self  # the lifespan publishes refuse_early to the HTTP protocol (shedding.py)

    def _record(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """requests_total and request_seconds, their label children cached (prometheus_client's
        `labels()` takes a lock and checks the labels each call)."""
        key = (endpoint, model, str(status))
        count = self._children.get(key)
        if count is None:
            count = self._children[key] = self.metrics.requests.labels(*key)
        timing = self._children.get((endpoint,))
        if timing is None:
            timing = self._children[(endpoint,)] = self.metrics.request_seconds.labels(endpoint)
        count.inc()
        timing.observe(seconds)

    def refuse_early(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                     client: Callable[[], tuple[str, int] | None], http_version: str) -> tuple[bytes, bytes] | None:
        """For shedding.SheddingHttpToolsProtocol, from a request's head alone: the 503 `queue_full`
        answer (head lines, body) when __call__ would give exactly that answer, counted and logged as
        __call__ counts and logs it; None for every other request, which then takes the ASGI path. `client()`
        names the client for the access line, asked only of a request refused here."""
        if method != b"POST":
            return None
        refusal = self._refusal()
        if refusal is None:
            return None
        endpoint = self._work_targets.get(target)  # exact path: a query string or %-escape goes the ASGI way
        if endpoint is None:
            return None
        fields = dict(headers)
        if self.keys and not self._authorised_headers(fields):
            return None
        if self.settings.cors_origins and b"origin" in fields:  # a browser's: its 503 needs the CORS headers
            return None
        length = fields.get(b"content-length")
        try:  # the Gate's own 413 / 422 answer comes first
            check_content_length(length.decode("latin-1") if length is not None else None, self.settings.max_body_bytes)
        except BadRequest:
            return None
        rid = request_id(fields)
        self._queue_full_count.inc()
        self._record(endpoint, "", 503, 0.0)
        self._log_refused(client, "POST", endpoint, http_version, 0.0, rid)
        body = refusal.body(rid)
        return self._queue_full_head + b"content-length: %d\r\nx-request-id: %s\r\n" % (len(body), rid), body

    def _refusal(self) -> Prebuilt | None:
        """The 503 a work request gets at arrival: the in-flight places are full, or the upload places."""
        if self.admission.service_inflight() >= self.admission.limit:
            return self._queue_full_response
        if self.uploading >= self.upload_limit:
            return self._uploads_full_response
        return None

    async def _upload(self, receive: Receive, deadline: float) -> bytes:
        """A work request's whole body, holding an upload place meanwhile; ServiceError 413 / 499 / 504, or
        408 when nothing arrives for DERMAGAN_UPLOAD_IDLE_S or, once the upload has taken that long, it has
        averaged less than DERMAGAN_UPLOAD_MIN_RATE bytes a second (the place then goes to someone else: a
        client that sends a head and then nothing, or a byte now and then, holds it that long, not for the
        whole deadline)."""
        self.uploading += 1
        self.metrics.uploading.set(self.uploading)
        idle, rate = self.settings.upload_idle_s, self.settings.upload_min_rate
        loop = asyncio.get_running_loop()
        began = last = loop.time()
        ends = deadline - time.monotonic() + began  # the deadline on the loop's clock
        received = 0

        def until() -> float:  # the first of: the deadline, `idle` after the last piece, the rate's limit
            return min(ends, last + idle, began + max(idle, received / rate) if rate else ends)

        def progress(size: int) -> None:
            nonlocal last, received
            last, received = loop.time(), size
            timeout.reschedule(until())

        try:
            async with asyncio.timeout_at(until()) as timeout:
                return await receive_body(receive, self.settings.max_body_bytes, progress)
        except TimeoutError:  # which limit it was: the one until() chose (a timer may fire a little early)
            limit = until()
            if limit == ends:
                raise DeadlineExceeded(f"the upload did not finish within the {self.settings.request_timeout_s:g} s "
                                       "deadline (DERMAGAN_REQUEST_TIMEOUT_S)") from None
            now = loop.time()
            floor = f", nor from then on average less than {rate} bytes a second (DERMAGAN_UPLOAD_MIN_RATE)" if rate else ""
            sent = (f"{received} bytes in {now - began:.1f} s, the last {now - last:.1f} s ago" if received
                    else f"nothing in {now - began:.1f} s")
            raise UploadStalled(f"the upload stalled: {sent}; an upload must not pause for {idle:g} s "
                                f"(DERMAGAN_UPLOAD_IDLE_S){floor}; send the whole body at network speed") from None
        finally:
            self.uploading -= 1
            self.metrics.uploading.set(self.uploading)

    def watch(self) -> ConnectionWatch:
        """The HTTP protocol's watch on this service's connections (published by the lifespan)."""
        settings = self.settings
        head_timed_out = self._protocol_answer(HeadTimeout(
            f"the request's head (request line and headers) did not arrive whole within {settings.head_timeout_s:g} s "
            "(DERMAGAN_HEAD_TIMEOUT_S)"))
        head_too_large = self._protocol_answer(HeadTooLarge(
            f"the request's head (request line and headers) is over {settings.max_head_bytes} bytes "
            "(DERMAGAN_MAX_HEAD_BYTES)"))
        return ConnectionWatch(settings.send_idle_s, settings.head_timeout_s, self.answer_stalled, head_timed_out,
                               self.not_http, self.metrics.connections.inc, settings.max_head_bytes, head_too_large)

    def _protocol_answer(self, error: ServiceError) -> Callable[[], tuple[bytes, bytes]]:
        """An answer the HTTP protocol writes itself (no request ID: no request was made): made once; each call
        counts one and gives its header lines and body."""
        answer = error_response(error)
        head, body = _head_lines(answer), bytes(answer.body)
        count = self.metrics.failures.labels("", error.reason)

        def answered() -> tuple[bytes, bytes]:
            count.inc()
            return head, body

        return answered

    def not_http(self, client: tuple[str, int] | None, reason: str, opening: str) -> tuple[bytes, bytes]:
        """For shedding.SheddingHttpToolsProtocol: bytes that are not a valid HTTP/1.1 request arrived (`reason`:
        the parser's; `opening`: "tls" or "h2" where the connection opened with a TLS handshake record or
        HTTP/2's preface, "http" for plain HTTP at the HTTPS port (listener.TlsListener), else ""). Counted as
        `not_http`, logged with the client (a warning for TLS, HTTP/2 and plain HTTP at the HTTPS port: a
        misconfigured client or balancer; else info: scanners, broken clients, request smuggling attempts);
        the 400 answer's head lines and JSON body."""
        self.metrics.failures.labels("", "not_http").inc()
        peer = "%s:%d" % tuple(client) if client else "-"
        if opening == "tls":
            detail = ("a TLS handshake arrived at this plain-HTTP port: use http://, or have the service speak HTTPS "
                      "(DERMAGAN_TLS_CERTFILE and DERMAGAN_TLS_KEYFILE)")
        elif opening == "http":
            detail = ("plain HTTP arrived at this HTTPS port: use https:// (the service speaks HTTPS here, "
                      "DERMAGAN_TLS_CERTFILE)")
        elif opening == "h2":
            detail = ("HTTP/2 (prior knowledge) arrived: the service speaks HTTP/1.1; a proxy in front can speak "
                      "HTTP/2 to clients")
        else:
            detail = f"invalid HTTP/1.1 request: {reason}"
        log.log(logging.WARNING if opening else logging.INFO, "answered 400 to %s: %s", peer, detail)
        answer = error_response(BadRequest(detail))
        return _head_lines(answer), bytes(answer.body)

    def answer_stalled(self, state: dict[str, Any], client: tuple[str, int] | None, unsent: int | None) -> None:
        """For shedding.SheddingHttpToolsProtocol: a connection whose client took no byte of its answer for
        DERMAGAN_SEND_IDLE_S was closed (`state`: that request's scope state, `unsent`: the bytes dropped,
        None where the kernel closed it). Logged with the request's ID, counted as `send_stalled`; its
        access line said 200 already."""
        self.metrics.failures.labels(state.get("model", ""), "send_stalled").inc()
        log.warning("closed the connection of %s: it took no byte of its answer for %g s (DERMAGAN_SEND_IDLE_S); "
                    "%s dropped (request_id=%s)", "%s:%d" % tuple(client) if client else "-", self.settings.send_idle_s,
                    "the answer" if unsent is None else f"{unsent} bytes of it", state.get("request_id", "-"))

    def _log_refused(self, client: Callable[[], tuple[str, int] | None], method: str, path: str, http_version: str,
                     seconds: float, rid: bytes) -> None:
        """The access line of a 503 `queue_full` refusal (`client()` asked only when it is written), or its
        place in the count of its second (`FoldedRefusals`)."""
        if not (self.settings.access_log and access_log.isEnabledFor(logging.INFO)):
            return
        if self._refusal_lines is None or self._refusal_lines.first():
            self._log_access(client(), method, path, http_version, 503, seconds, "", rid)

    def _log_folded(self, count: int, seconds: float) -> None:
        fields = ({"status": 503, "refused": count, "duration_ms": round(seconds * 1000, 1)}
                  if self.settings.log_format == "json" else None)
        access_log.info("%d more %s refused (503 queue_full) in the last %.1f s, not logged one by one "
                        "(DERMAGAN_ACCESS_LOG_REFUSALS=each logs each)", count, "request" if count == 1 else "requests",
                        seconds, extra=fields)

    def flush_log(self) -> None:
        """Write what the access log holds back (the count of refusals folded in the current second)."""
        if self._refusal_lines is not None:
            self._refusal_lines.flush()

    def _log_access(self, client: tuple[str, int] | None, method: str, path: str, http_version: str, status: int,
                    seconds: float, model: str, rid: bytes) -> None:
        """One access line (DERMAGAN_ACCESS_LOG): never a query string, header value (but the ID) or body;
        the path %-escaped as uvicorn's line has it (a decoded %0A would start a forged line)."""
        if self.settings.access_log and access_log.isEnabledFor(logging.INFO):
            peer, where, ms, rid_text = "%s:%d" % tuple(client) if client else "-", quote(path), seconds * 1000, rid.decode("ascii")
            fields = ({"client": peer, "method": method, "path": where, "status": status, "duration_ms": round(ms, 1),
                       "model": model or None, "request_id": rid_text} if self.settings.log_format == "json" else None)
            access_log.info('%s "%s %s HTTP/%s" %d %.1f ms model=%s request_id=%s', peer, method, where, http_version,
                            status, ms, model or "-", rid_text, extra=fields)

    def _authorised_headers(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None:
            return False
        matched = False
        for key in self.keys:  # every key compared, in constant time: which one matched does not show in the timing
            matched |= hmac.compare_digest(given, key)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        endpoint = path if path in self.endpoints else "other"
        t0 = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        rid = request_id(headers)
        scope.setdefault("state", {})["request_id"] = rid.decode("ascii")

        extra_headers = [(b"x-request-id", rid), NOSNIFF]
        if path in DOCS_PAGES:
            extra_headers.append((b"content-security-policy", DOCS_PAGE_POLICY))

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *extra_headers]}
            await send(message)

        refused = False  # answered 503 queue_full (its access line may be folded: FoldedRefusals)
        try:
            problem: ServiceError | None = None
            if self.keys and not _open_path(path) and not self._authorised_headers(headers):
                problem = Unauthorized("missing or wrong API key: send it as 'X-API-Key: <key>' or "
                                       "'Authorization: Bearer <key>'")
            else:
                try:
                    content_length = headers.get(b"content-length")
                    check_content_length(content_length.decode("latin-1") if content_length else None,
                                         self.settings.max_body_bytes)
                except BadRequest as e:
                    problem = e
                    self.metrics.failures.labels("", e.reason).inc()
            work = problem is None and path in WORK_PATHS and scope.get("method") == "POST"
            refusal = self._refusal() if work else None
            if refusal is not None:
                refused = True
                self._queue_full_count.inc()
                await refusal(scope, receive, send_and_record, rid)
                await _drain_body(receive, self.settings.max_body_bytes)
            elif problem is not None:
                await error_response(problem, rid.decode("ascii"))(scope, receive, send_and_record)
                await _drain_body(receive, self.settings.max_body_bytes)
            elif work:
                deadline = scope.setdefault("state", {})["deadline"] = time.monotonic() + self.settings.request_timeout_s
                try:
                    replay = _Replay(await self._upload(receive, deadline), receive)
                except ServiceError as e:
                    self.metrics.failures.labels("", e.reason).inc()
                    answer = error_response(e, rid.decode("ascii"))
                    if isinstance(e, (UploadStalled, DeadlineExceeded)):
                        # The client is too slow to wait for the rest of its body: close the connection after the
                        # answer (RFC 9110 15.5.9), else what it still trickles would keep it open (as a 413's rest
                        # is read and dropped: a fast client's connection stays usable).
                        answer.headers["Connection"] = "close"
                    await answer(scope, receive, send_and_record)
                else:
                    if not self.admission.try_enter():  # the places filled up while the body arrived
                        replay.body = None
                        refused = True
                        self._queue_full_count.inc()
                        await self._queue_full_response(scope, receive, send_and_record, rid)
                    else:
                        self.metrics.inflight.set(self.admission.inflight)
                        try:
                            await self.app(scope, replay, send_and_record)
                        finally:
                            self.admission.leave()
                            self.metrics.inflight.set(self.admission.inflight)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            seconds, model = time.perf_counter() - t0, scope["state"].get("model", "")
            self._record(endpoint, model, status, seconds)
            if refused and status == 503:
                self._log_refused(lambda: scope.get("client"), scope.get("method", ""), path,
                                  scope.get("http_version", "1.1"), seconds, rid)
            elif not (status == 200 and path in PUBLIC_PATHS):  # a balancer's probe every few seconds is not news
                self._log_access(scope.get("client"), scope.get("method", ""), path,
                                 scope.get("http_version", "1.1"), status, seconds, model, rid)


def _route_path(scope: Scope) -> str:
    """The request's path in the app's routes: without the DERMAGAN_ROOT_PATH that uvicorn put in front of
    it (Starlette's router strips it the same way)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def _open_path(path: str) -> bool:
    """Served without the API key: the health probes and the documentation."""
    return path in PUBLIC_PATHS or path in DOCS_PATHS or path.startswith(DOCS_ASSETS + "/")


def _amend_openapi(app: FastAPI, amend: Callable[[dict[str, Any]], None]) -> None:
    """Have `amend` change the OpenAPI document once, in place, when FastAPI first builds it (and caches it
    in app.openapi_schema); amendments chain."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            amend(build())
        return app.openapi_schema

    setattr(app, "openapi", openapi)


def _declare_max_count(schema: dict[str, Any], max_count: int) -> None:
    """/generate's `count` gets the service's DERMAGAN_MAX_COUNT as its maximum: the request model cannot know
    the setting (it was fixed at 64, so a higher setting refused counts over 64)."""
    schema["components"]["schemas"]["GenerateRequest"]["properties"]["count"]["maximum"] = max_count


def _declare_api_key(schema: dict[str, Any]) -> None:
    """Every operation but the probes needs DERMAGAN_API_KEY, in either header the Gate takes, so that clients
    generated from the document send it and Swagger UI's Authorize button works."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"apiKey": []}, {"bearer": []}]
    for path in PUBLIC_PATHS:
        for operation in schema["paths"].get(path, {}).values():
            operation["security"] = []
    # the 401 of the operations that list it (the work endpoints) on every other secured one (/v1/models, /metrics)
    operations = [(path, op) for path, ops in schema["paths"].items() for op in ops.values()]
    unauthorised = next((op["responses"]["401"] for _, op in operations if "401" in op.get("responses", {})), None)
    for path, operation in operations:
        if unauthorised is not None and path not in PUBLIC_PATHS:
            operation.setdefault("responses", {}).setdefault("401", unauthorised)


# ---- request and response bodies -------------------------------------------------------------

class GenerateRequest(BaseModel):
    # the example is what Swagger UI's "Try it out" sends as it stands (without one it would send
    # model "string", and a seed of 2^53 - 1)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"kind": "hand", "count": 1, "seed": 2}]})

    kind: str = Field(min_length=1, max_length=LABEL_MAX_LEN, pattern=LABEL_PATTERN, description=(
        "what to draw: a kind a loaded generator draws (GET /v1/models: its `labels`) -- eczema, hand, lesion "
        "for the shipped models; a generator trained on one's own images draws its class names (e.g. MEL, NV)"))
    # strict: JSON's true, "2" and 1e3 are not counts or seeds (pydantic's lax mode took them as 1, 2 and 1000)
    count: int = Field(1, ge=1, strict=True, description="how many images (at most DERMAGAN_MAX_COUNT)")  # its maximum: _declare_max_count
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True, description=(
        "image i is drawn from seed + i (numpy's default generator); omitted = random. "
        "The same seed always gives the same images."))
    format: Literal["auto", "png", "json"] = Field("auto", description=(
        "auto: one image as image/png, several as JSON; png needs count 1; json always JSON"))
    model: str | None = Field(None, max_length=200, description=(
        "a loaded generator's name (GET /v1/models) that draws `kind`; omitted = the one that serves the kind "
        "by default (the answer names it)"))


class GeneratedImage(BaseModel):
    seed: int = Field(description="regenerates exactly this image with count=1")
    png_base64: str


class GenerateResponse(BaseModel):
    model: str
    kind: str
    images: list[GeneratedImage]


class ModelInfo(BaseModel):
    name: str
    task: str
    version: str
    resolution: tuple[int, int]
    labels: list[str]
    provider: str
    ready: bool
    sha256: str
    trained_on: str = Field(description="the data it was trained on (the shipped models: procedural renders)")
    metrics: dict[str, float] = Field(description=(
        "its headline offline metrics (dermagan evaluate, on held-out data; the model card explains them)"))
    created: str = Field(description="when it was exported (ISO 8601)")
    default: list[str] = Field(description=(
        "what this model serves when a request names no `model`: its task (e.g. [\"cycle-add\"]), or for a "
        "generator the kinds it draws by default; [] when another model of its task comes first"))


_IMAGE_FORM = {"type": "string", "format": "binary"}
_MAX_WORK_PX = 1_000_000  # bounds the number only: past the image's shorter side it means the image's own size


def _made_by(engine: Engine) -> dict[str, str]:
    """Which model made an answer: its name, and the sha256 of its file -- after a reload (SIGHUP) or during a
    rolling update the same name may be another model, and a client that records provenance must know."""
    return {"X-Dermagan-Model": engine.entry.name, "X-Dermagan-Model-Sha256": engine.entry.sha256}


def _multipart_doc(with_mask: bool) -> dict[str, Any]:
    """The multipart form of an edit, for the OpenAPI document. An optional field without a default has
    `examples: [""]`: Swagger UI's "Try it out" then leaves it empty (an empty field counts as absent,
    uploads.form_files) instead of filling in "string" or the minimum, which the service would refuse."""
    props: dict[str, Any] = {"image": {**_IMAGE_FORM, "description": imaging.ACCEPTED_TEXT},
                             "model": {"type": "string", "examples": [""], "description": (
                                 "optional: a loaded model's name (GET /v1/models) of the task this request "
                                 "needs; omitted = the task's default (the answer's X-Dermagan-Model names it)")}}
    if with_mask:
        props["mask"] = {**_IMAGE_FORM, "description": "optional: same size as image; white = where to edit"}
        props["work_px"] = {"type": "integer", "minimum": 1, "examples": [""], "description": (
            "without a mask only: the image's shorter side, in pixels, as the model sees it (default and "
            "least: the model's resolution, i.e. the whole image is one field of view, as in training; "
            "larger: smaller eczema, in more places; never more than the image's own)")}
        props["format"] = {"type": "string", "enum": list(imaging.OutputFormat.MEDIA_TYPES), "default": "png",
                           "description": "the result's encoding: png (lossless; outside the mask bit-identical), "
                                          "jpeg or webp (lossy, much smaller and faster for photographs)"}
        # no "default": a form that sent it with format png would be refused (quality does nothing there)
        props["quality"] = {"type": "integer", "minimum": 1, "maximum": 100, "examples": [""],
                            "description": "jpeg / webp only: the encoder's quality (default 90)"}
    else:
        props["output"] = {"type": "string", "enum": list(pipeline.SEGMENT_OUTPUTS), "default": "mask",
                           "description": "mask: white = eczema (p > 0.5); probability: the segmenter's probability "
                                          "of eczema as grey levels 0-255 (>= 128 exactly where the mask is white)"}
    schema = {"type": "object", "required": ["image"], "properties": props}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _work_px(files: dict[str, bytes], model_hw: tuple[int, int]) -> int:
    """The form's `work_px` (mask-free edits only), at least the model's resolution (its default)."""
    least = min(model_hw)
    if "work_px" not in files:
        return least
    if "mask" in files:
        raise InvalidParameter("work_px applies to edits without a mask; with one, the mask's box sets the scale")
    return _whole_number(files, "work_px", least, _MAX_WORK_PX,
                         f"of pixels from {least} (this model's resolution) to {_MAX_WORK_PX}")


def _whole_number(files: dict[str, bytes], name: str, least: int, most: int, what: str) -> int:
    """The form field `name` as an integer in [least, most], else a 422 saying it must be a whole number
    `what`. At most 7 digits are read (int() refuses more than 4300)."""
    raw = files[name].decode("ascii", "replace").strip()
    if not (re.fullmatch(r"[0-9]{1,7}", raw) and least <= int(raw) <= most):
        raise InvalidParameter(f"{name} must be a whole number {what}, got {raw[:40]!r}")
    return int(raw)


def _model_name(files: dict[str, bytes]) -> str | None:
    """The form's `model` (a loaded model's name, from /v1/models), or None: the task's default."""
    return files["model"].decode("utf-8", "replace").strip() if "model" in files else None


def _output_format(files: dict[str, bytes]) -> imaging.OutputFormat:
    """The form's `format` (png, jpeg / jpg, webp; default png) and `quality` (jpeg / webp only)."""
    kinds = imaging.OutputFormat.MEDIA_TYPES
    raw = files.get("format", b"png").decode("ascii", "replace").strip().lower()
    kind = "jpeg" if raw == "jpg" else raw
    if kind not in kinds:
        raise InvalidParameter(f"format must be one of {', '.join(kinds)}, got {raw[:40]!r}")
    if "quality" not in files:
        return imaging.OutputFormat(kind)
    if kind == "png":
        raise InvalidParameter("quality applies to format jpeg or webp; png is lossless")
    return imaging.OutputFormat(kind, _whole_number(files, "quality", 1, 100, "from 1 to 100"))


_EDITED: dict[int | str, dict[str, Any]] = {200: {"content": {t: {} for t in imaging.OutputFormat.MEDIA_TYPES.values()},
                                                  "description": "the result as PNG, or JPEG / WebP (`format`); no metadata"}}


# ---- the app ---------------------------------------------------------------------------------

def _answer_head_and_options(app: FastAPI) -> None:
    """HEAD wherever GET is (RFC 9110 9.3.2: the GET answer's status and headers, no body), and OPTIONS on
    every path (204, `Allow`: what the path answers). Uptime monitors and load balancers often check
    /healthz or /readyz with HEAD, `curl -I` sends it, and HAProxy's bare `option httpchk` sends
    `OPTIONS /`, where a 405 marks the server down; FastAPI's routes, unlike Starlette's, add neither.
    These routes are hidden from the OpenAPI document; for HEAD the server (uvicorn) drops the body. (A
    browser's CORS preflight never reaches them: CORSMiddleware answers it.)"""
    allowed: dict[str, set[str]] = {}
    for route in list(app.routes):
        if not isinstance(route, Route) or route.methods is None:  # (mounts: the docs' assets answer for themselves)
            continue
        if isinstance(route, APIRoute) and "GET" in route.methods and "HEAD" not in route.methods:
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False,
                              response_class=route.response_class, response_model=route.response_model,
                              dependencies=route.dependencies, name=f"{route.name}-head")
        allowed.setdefault(route.path, set()).update(route.methods | ({"HEAD"} if "GET" in route.methods else set()))

    def answer(allow: str) -> Callable[[], Any]:
        async def options() -> Response:
            return Response(status_code=204, headers={"Allow": allow})
        return options

    for path, methods in allowed.items():
        app.add_api_route(path, answer(", ".join(sorted(methods | {"OPTIONS"}))), methods=["OPTIONS"],
                          include_in_schema=False, name=f"{path}-options")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    limit_arenas(settings.malloc_arenas)  # before the codec pool and ORT start their threads
    quiet_startup_refusals()
    metrics = Metrics()
    runtime = ModelRuntime(settings, metrics)
    admission = for_process(settings.inflight_limit, settings.process_inflight_limit, settings.workers)

    gate_registry: dict[str, Gate] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await runtime.load()  # raises StartupError: uvicorn refuses to start
        chain_drain_on_exit_signals(runtime)
        reload_on_sighup(runtime)
        warming = None
        if settings.workers > 1:
            # One of several processes on the port (`--workers N`: a SO_REUSEPORT socket each): uvicorn listens
            # once the lifespan has started, and the kernel then hands this worker its share of the new
            # connections. A worker warming in the background -- a replacement after a crash -- answered them 503
            # not_ready and made /readyz flap between workers. So a worker listens warm (its siblings serve),
            # with the models of any SIGHUP that came meanwhile (forwarded to every worker by the supervisor).
            await runtime.warm()
            await runtime.reloads_done()
        else:
            warming = asyncio.create_task(runtime.warm(), name="warm-up")
        gate = gate_registry.get("gate")  # built before the lifespan runs
        # the lifespan state reaches the HTTP protocol (shedding.py) and every request's scope
        state: dict[str, Any] = {WATCH_KEY: gate.watch()} if gate is not None else {}
        if gate is not None and settings.early_refusal:
            state[STATE_KEY] = gate.refuse_early
        try:
            yield state
        finally:
            if warming is not None:
                warming.cancel()
            await runtime.shutdown()
            admission.close()
            if gate is not None:
                gate.flush_log()

    about = dict(title="dermagan", version=dermagan.__version__, lifespan=lifespan,
                 description="Generate, add and remove eczema, segment it (Furger et al., ANNPR 2020).")
    if settings.docs:  # Swagger UI's validator badge would send the document's address to validator.swagger.io
        app = FastAPIOffline(static_url=DOCS_ASSETS, swagger_ui_parameters={"validatorUrl": None}, **about)
    else:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, **about)
    app.state.runtime = runtime
    app.state.settings = settings

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        if isinstance(exc, BadRequest):
            metrics.failures.labels(request.scope.get("state", {}).get("model", ""), exc.reason).inc()
        return error_response(exc, _request_id(request))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        def one(e: dict[str, Any]) -> str:
            if e.get("type") == "json_invalid":
                return f"body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})"
            where = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
            if where == "kind" and e.get("type") == "string_pattern_mismatch":  # pydantic would quote the regex
                near = str(e.get("input", "")).strip(" .")
                return (f"kind {e.get('input')!r}: not a kind name ({LABEL_RULE})"
                        + (f"; did you mean {near!r}?" if near and re.fullmatch(LABEL_PATTERN, near) else ""))
            return f"{where}: {e['msg']}"
        problems = "; ".join(one(e) for e in exc.errors())
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json") and any(
                e["loc"] == ("body",) for e in exc.errors()):  # e.g. curl -d without -H 'content-type: ...'
            problems = f"expected a JSON body (Content-Type: application/json), got {ctype}"
        return await on_service_error(request, InvalidParameter(problems or "invalid request"))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:  # which paths there are: a typo, a version prefix or a proxy's path shows
            paths = sorted({r.path for r in app.routes if isinstance(r, APIRoute) and r.include_in_schema})
            detail += f"; this service's paths: {', '.join(paths)}" + (" (GET /docs describes them)" if settings.docs else "")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names one route's methods; OPTIONS answers all the path's
            methods = {m for r in app.routes if isinstance(r, Route) and r.methods
                       and r.matches(request.scope)[0] is not Match.NONE for m in r.methods}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(methods))}
        return JSONResponse(error_body(code, detail, _request_id(request)), status_code=exc.status_code,
                            headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        rid = _request_id(request)
        log.error("unexpected %s in %s %s (request_id=%s)", type(exc).__name__, request.method, request.url.path,
                  rid or "-", exc_info=exc)
        # (answered outside the Gate, by Starlette's outermost middleware: the ID header is set here)
        return JSONResponse(error_body("internal", f"unexpected server error ({type(exc).__name__})", rid),
                            status_code=500, headers={"X-Request-ID": rid, "X-Content-Type-Options": "nosniff"} if rid
                            else {"X-Content-Type-Options": "nosniff"})

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    # ---- edits ----------------------------------------------------------------------------

    def _watch_disconnect(request: Request) -> asyncio.Task[None]:
        async def wait() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        return asyncio.create_task(wait())

    @asynccontextmanager
    async def _image_work(request: Request, image: bytes, deadline: float, model: str,
                          pixels: int | None = None) -> AsyncIterator[asyncio.Task[None]]:
        """One request's image work: its pixels (`pixels`, else the image's own) held in the image budget
        (service/budget.py) and the client's disconnect watched (the task, for the batcher) until the block
        ends. The watch begins before the wait for pixels: a client that leaves meanwhile gives up its place
        in the line, and its in-flight place, at once (499), and its image is never decoded."""
        watcher = _watch_disconnect(request)
        try:
            async with runtime.image_budget(image, deadline=deadline, model=model, pixels=pixels, disconnected=watcher):
                yield watcher
        finally:
            watcher.cancel()

    def _unless_gone(watcher: asyncio.Task[None], model: str, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` (a request's decoding step), refused 499 in its codec thread when the client has gone by then:
        the wait for a thread can be long, and a departed client's image is never decoded. (`done()` only reads
        the task's state.)"""
        def run(*args: Any, **kwargs: Any) -> T:
            if watcher.done():
                metrics.failures.labels(model, "cancelled").inc()
                raise Cancelled("the client disconnected before its image was decoded")
            return fn(*args, **kwargs)
        return run

    def _arrived(request: Request) -> float | None:
        """time.monotonic() of the request's arrival at the Gate (before its upload), where it passed one."""
        deadline: float | None = request.scope.get("state", {}).get("deadline")
        return None if deadline is None else deadline - settings.request_timeout_s

    def _deadline(request: Request) -> float:
        """The request's deadline, counted from its arrival at the gate (before the body is read)."""
        deadline: float | None = request.scope.get("state", {}).get("deadline")
        return deadline if deadline is not None else time.monotonic() + settings.request_timeout_s

    async def _edit(request: Request, task: str, cycle_task: str) -> Response:
        runtime.require_ready(_arrived(request))
        deadline = _deadline(request)
        body = await request.body()  # read and capped by the Gate (Gate._upload)
        files = form_files(parse_multipart(body, request.headers.get("content-type")), ("image",),
                           ("mask", "work_px", "format", "quality", "model"))
        engine = runtime.model_for(task if "mask" in files else cycle_task, name=_model_name(files))
        name = request.state.model = engine.entry.name
        work_px = _work_px(files, engine.hw)
        output = _output_format(files)
        fade = pipeline.REMOVED_DETAIL_FADE if task == "remove" else 0.0
        # without a mask: the padded working area is charged (a very thin image's is refused, 413, here)
        pixels = None if "mask" in files else pipeline.tiled_pixels(files["image"], engine.hw, work_px=work_px,
                                                                    max_pixels=settings.max_pixels)
        async with _image_work(request, files["image"], deadline, name, pixels) as watcher:
            if "mask" in files:
                plan = await runtime.run_codec(
                    _unless_gone(watcher, name, pipeline.plan_masked_edit), files["image"], files["mask"], engine.hw,
                    deadline=deadline, model=name,
                    max_pixels=settings.max_pixels, dilate_px=settings.mask_dilate_px, context=settings.mask_context,
                    output=output)
                out = await runtime.infer(engine, plan.inputs, disconnected=watcher, deadline=deadline,
                                          request_id=_request_id(request))
                encoded = await runtime.run_codec(pipeline.finish_masked_edit, plan, out["image"][0], deadline=deadline,
                                                  model=name, dilate_px=settings.mask_dilate_px, fade=fade)
            else:
                tiled = await runtime.run_codec(_unless_gone(watcher, name, pipeline.plan_tiled_edit), files["image"],
                                                engine.hw, deadline=deadline, model=name, max_pixels=settings.max_pixels,
                                                overlap=settings.tile_overlap, work_px=work_px, output=output)
                blender = pipeline.TileBlender(tiled, fade=fade)
                chunks = tiled.chunks(4 * settings.max_batch)
                while (chunk := await runtime.run_codec(next, chunks, None, deadline=deadline, model=name)) is not None:
                    origins, inputs = chunk
                    out = await runtime.infer(engine, inputs, disconnected=watcher, deadline=deadline,
                                              request_id=_request_id(request))
                    await runtime.run_codec(blender.add, origins, out["image"], deadline=deadline, model=name)
                encoded = await runtime.run_codec(blender.result, deadline=deadline, model=name)
        return Response(encoded, media_type=output.media_type, headers={**_made_by(engine), **PRIVATE})

    edit_errors = _error_docs(401, 408, 413, 415, 422, 503, 504)

    @app.post("/eczema/add", tags=["eczema"], response_class=Response, responses={**_EDITED, **edit_errors},
              openapi_extra=_multipart_doc(with_mask=True), summary="Add eczema inside the mask (or everywhere, with no mask)")
    async def eczema_add(request: Request) -> Response:
        """Multipart `image` (+ optional `mask`, white = where to add). With a mask, only pixels within
        DERMAGAN_MASK_DILATE_PX of it change (all others are bit-identical); without one, the CycleGAN
        healthy->eczema generator runs over the whole image, shrunk to `work_px` (default: the model's
        resolution), in overlapping tiles."""
        return await _edit(request, "add", "cycle-add")

    @app.post("/eczema/remove", tags=["eczema"], response_class=Response, responses={**_EDITED, **edit_errors},
              openapi_extra=_multipart_doc(with_mask=True), summary="Remove eczema inside the mask (or everywhere, with no mask)")
    async def eczema_remove(request: Request) -> Response:
        """Multipart `image` (+ optional `mask`): with a mask the supervised model, without one the
        CycleGAN eczema->healthy generator (at `work_px`, as /eczema/add)."""
        return await _edit(request, "remove", "cycle-remove")

    @app.post("/eczema/segment", tags=["eczema"], response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "greyscale PNG: the mask (white = eczema) or, with output=probability, the probability map"}, **edit_errors},
              openapi_extra=_multipart_doc(with_mask=False), summary="Segment eczema: image -> mask")
    async def eczema_segment(request: Request) -> Response:
        runtime.require_ready(_arrived(request))
        deadline = _deadline(request)
        body = await request.body()  # read and capped by the Gate (Gate._upload)
        files = form_files(parse_multipart(body, request.headers.get("content-type")), ("image",), ("model", "output"))
        engine = runtime.model_for("segment", name=_model_name(files))
        output = files.get("output", b"mask").decode("ascii", "replace").strip().lower()
        if output not in pipeline.SEGMENT_OUTPUTS:
            raise InvalidParameter(f"output must be one of {', '.join(pipeline.SEGMENT_OUTPUTS)}, got {output[:40]!r}")
        name = request.state.model = engine.entry.name
        async with _image_work(request, files["image"], deadline, name) as watcher:
            plan = await runtime.run_codec(_unless_gone(watcher, name, pipeline.plan_segment), files["image"], engine.hw,
                                           deadline=deadline, model=name, max_pixels=settings.max_pixels)
            out = await runtime.infer(engine, plan.inputs, disconnected=watcher, deadline=deadline,
                                      request_id=_request_id(request))
            png = await runtime.run_codec(pipeline.finish_segment, plan, out["mask_logits"][0], output,
                                          deadline=deadline, model=name)
        return Response(png, media_type="image/png", headers={**_made_by(engine), **PRIVATE})

    # ---- generate -------------------------------------------------------------------------

    @app.post("/generate", tags=["generate"], response_model=GenerateResponse,
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "count 1: image/png (header X-Dermagan-Seed); else JSON"},
                         **_error_docs(401, 408, 413, 422, 503, 504)},
              summary="Synthesise images of a kind (eczema, hand, lesion, or a generator's own classes)")
    async def generate(request: Request, body: GenerateRequest) -> Response:
        runtime.require_ready(_arrived(request))
        deadline = _deadline(request)
        if body.count > settings.max_count:
            raise InvalidParameter(f"count is {body.count}; at most {settings.max_count} (DERMAGAN_MAX_COUNT)")
        if body.format == "png" and body.count != 1:
            raise InvalidParameter(f"format 'png' returns one image; count is {body.count} (use format 'json')")
        drawn = sorted({k for e in runtime.engines.values() if e.entry.task == "generate" for k in e.entry.labels})
        if body.kind not in KINDS and body.kind not in drawn:  # a renderer kind no model draws: model_unavailable
            alike = [k for k in drawn if k.casefold() == body.kind.casefold()]
            raise InvalidParameter(f"kind {body.kind!r}: no loaded generator draws it"
                                   + (f" (did you mean {alike[0]!r}? kinds are case-sensitive)" if alike else "")
                                   + f"; the kinds here are {drawn} (GET /v1/models lists each generator's labels)")
        if body.seed is not None and body.seed + body.count - 1 > MAX_SEED:  # image i is drawn from seed + i
            raise InvalidParameter(f"seed + count - 1 must be at most {MAX_SEED} (image i is drawn from seed + i): with "
                                   f"count {body.count} the largest seed is {MAX_SEED - body.count + 1}")
        engine = runtime.model_for("generate", body.kind, name=body.model)
        request.state.model = engine.entry.name
        base = secrets.randbelow(MAX_SEED - settings.max_count) if body.seed is None else body.seed
        seeds = [base + i for i in range(body.count)]
        label = engine.entry.labels.index(body.kind) if "label" in engine.entry.inputs else None
        inputs = pipeline.generate_inputs(seeds, engine.entry.z_dim or 0, label)
        watcher = _watch_disconnect(request)
        try:
            out = await runtime.infer(engine, inputs, disconnected=watcher, deadline=deadline,
                                      request_id=_request_id(request))
        finally:
            watcher.cancel()
        pngs = await runtime.run_codec(pipeline.finish_generate, out["image"], deadline=deadline, model=engine.entry.name)
        headers = _made_by(engine)
        if body.format == "png" or (body.format == "auto" and body.count == 1):
            return Response(pngs[0], media_type="image/png", headers={**headers, "X-Dermagan-Seed": str(seeds[0])})
        doc = GenerateResponse(model=engine.entry.name, kind=body.kind, images=[
            GeneratedImage(seed=s, png_base64=base64.b64encode(p).decode("ascii")) for s, p in zip(seeds, pngs)])
        return Response(doc.model_dump_json(), media_type="application/json", headers=headers)

    # ---- operations -----------------------------------------------------------------------

    @app.get("/v1/models", tags=["operations"], response_model=list[ModelInfo])
    async def list_models() -> list[ModelInfo]:
        return [ModelInfo(name=n, task=e.entry.task, version=e.entry.version, resolution=e.entry.resolution,
                          labels=e.entry.labels, provider=e.provider, ready=n in runtime.warmed, sha256=e.entry.sha256,
                          trained_on=e.entry.trained_on, metrics=e.entry.metrics, created=e.entry.created,
                          default=runtime.defaults(n)) for n, e in runtime.engines.items()]

    if settings.docs:
        @app.get("/", include_in_schema=False)
        async def home(request: Request) -> Response:
            """A person who opens the service's address in a browser lands on its documentation."""
            return RedirectResponse(request.scope.get("root_path", "") + "/docs", status_code=307)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses=_error_docs(503))
    async def readyz() -> dict[str, Any]:
        runtime.require_ready()
        return {"status": "ready", "models": sorted(runtime.engines)}

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    _answer_head_and_options(app)
    _amend_openapi(app, lambda schema: _declare_max_count(schema, settings.max_count))
    if settings.api_key is not None:
        _amend_openapi(app, _declare_api_key)
    endpoints = frozenset(str(getattr(r, "path")) for r in app.routes if hasattr(r, "path"))
    app.add_middleware(Gate, settings=settings, metrics=metrics, endpoints=endpoints, admission=admission,
                       registry=gate_registry)
    if settings.cors_origins:  # outermost: a browser's preflight is answered before the API key is asked for
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=list(CORS_REQUEST_HEADERS), expose_headers=list(CORS_EXPOSED_HEADERS),
                           max_age=600)
    return app

