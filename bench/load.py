"""An asyncio load generator: closed loop at concurrency c, open loop (Poisson) at rate r.

Two clients: `HttpxClient` (httpx) and `RawHttp` (asyncio protocols, pre-encoded HTTP/1.1 keep-alive).
On the 2-core machine httpx spends ~2-3 ms of CPU a request -- as much as the server spends on the
whole request -- so it starves the server it measures; `RawHttp` spends ~0.13 ms (closed loop, 2026-12-03;
0.15 when it was built on asyncio streams) and is the bench scripts' default (`--client httpx` for the
other). It reads answers by Content-Length only (no chunked transfer encoding). One request body is built once (a multipart
image + mask, see `multipart`) and sent as bytes: the client never re-encodes uploads.

- `closed_loop(url, req, concurrency, duration_s)`: c workers, each sending its next request as soon
  as the last one answered. Latency = answer time - send time.
- `open_loop(url, req, rate, duration_s)`: arrivals at exponential gaps (Poisson, seeded). Latency
  is measured from the *scheduled* arrival (no coordinated omission); arrivals past
  `max_in_flight` outstanding requests are counted as `client_dropped` instead of sent.

`summarize(samples, duration_s)` gives req/s (all answers and 200s only), p50/p99/p99.9 of the 200s,
and errors by status (0 = connection error / timeout). `batch_stats(url)` reads the
`dermagan_batch_size` histogram's sum and count from /metrics (the peers in bench/peers/ export the
same two lines), so a run's mean batch size is (sum1 - sum0) / (count1 - count0).
Every loop is bounded in time; all traffic goes to the URL given (loopback in every bench script).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Call:
    """One HTTP request, pre-encoded."""

    path: str
    content: bytes
    headers: dict[str, str]
    method: str = "POST"


def multipart(fields: dict[str, bytes], content_type: str = "image/png") -> tuple[bytes, str]:
    """multipart/form-data body of file fields -> (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def edit_call(path: str, image: bytes, mask: bytes | None = None) -> Call:
    fields = {"image": image} | ({"mask": mask} if mask is not None else {})
    body, ctype = multipart(fields)
    return Call(path, body, {"content-type": ctype})


@dataclass(frozen=True)
class Sample:
    t: float  # scheduled (open loop) or actual (closed loop) send time, seconds since the run began
    latency_s: float
    status: int  # 0: connection error or client timeout
    retry_after: str | None = None
    lag_s: float = 0.0  # open loop: how late the client itself issued it after its scheduled arrival
    headers_read: bool = True  # False: sent by h2load, whose log has no headers (Retry-After unchecked)


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    duration_s: float = 0.0
    client_dropped: int = 0  # open loop: arrivals not sent because max_in_flight were outstanding
    errors: Counter[str] = field(default_factory=Counter)  # exception names of status-0 samples
    started_at: float = 0.0  # time.time() at the run's t = 0 (open loops), to place other clients' samples


class _Exchange(asyncio.Protocol):
    """One keep-alive connection of the raw client: at most one request in flight, its answer (or
    failure) handed to a callback -- a future's for `RawHttp`, a plain function for the open loop.

    Parses only what the load generator reports: the status line, Content-Length, Retry-After and
    Connection headers; the answer's body is counted, not kept."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.callback: Callable[[_Exchange, tuple[int, str | None] | None, BaseException | None], None] | None = None
        self.reused = False
        self.t_sched = self.t_sent = self.lag = 0.0  # the open loop's bookkeeping for this exchange
        self._buf = bytearray()
        self._head: tuple[int, str | None, bool] | None = None  # status, retry-after, close
        self._need = 0  # body bytes still to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.open = transport, True  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.finish(None, ConnectionResetError(f"connection closed with {len(self._buf)} bytes of an answer"))

    def start(self, data: bytes, callback: Callable[..., None]) -> None:
        assert self.transport is not None
        self.callback = callback
        self._buf.clear()
        self._head, self._need = None, 0
        self.transport.write(data)

    def exchange(self, data: bytes) -> asyncio.Future[tuple[int, str | None]]:
        waiter: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()

        def settle(_: _Exchange, answer: tuple[int, str | None] | None, exc: BaseException | None) -> None:
            if not waiter.done():
                waiter.set_exception(exc) if exc is not None else waiter.set_result(answer)  # type: ignore[arg-type]

        self.start(data, settle)
        return waiter

    def finish(self, answer: tuple[int, str | None] | None, exc: BaseException | None = None) -> None:
        """Hand the answer (or the failure) to the callback, once."""
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(self, answer, exc)

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).lower()
            status = int(head[9:12])
            clen = _header(head, b"content-length")
            self._head = (status, _header(head, b"retry-after"), _header(head, b"connection") == "close")
            self._need = int(clen or 0) - (len(self._buf) - end - 4)
        else:
            self._need -= len(data)
        if self._need <= 0 and self.callback is not None:
            status, retry, close = self._head
            if close:
                self.open = False
                assert self.transport is not None
                self.transport.close()
            self.finish((status, retry))


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header `name` in a lower-cased response head, or None."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    j = head.find(b"\r\n", i + 2)
    return head[i + len(name) + 3: j if j >= 0 else len(head)].strip().decode("latin-1")


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio protocols, for when httpx's own CPU cost (~2-5 ms
    a request) would starve the server on a small machine: requests are pre-encoded bytes, each
    connection is an `asyncio.Protocol` answering one future per request (no stream objects, no task
    per timeout), and only the headers the reports use are parsed."""

    def __init__(self, url: str, limit: int, timeout_s: float) -> None:
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.timeout_s = timeout_s
        self._idle: list[_Exchange] = []
        self._encoded: dict[int, bytes] = {}

    def _bytes(self, call: Call) -> bytes:
        data = self._encoded.get(id(call))
        if data is None:
            head = [f"{call.method} {call.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                    f"Content-Length: {len(call.content)}"] + [f"{k}: {v}" for k, v in call.headers.items()]
            data = self._encoded[id(call)] = ("\r\n".join(head) + "\r\n\r\n").encode() + call.content
        return data

    async def _connect(self) -> _Exchange:
        _, conn = await asyncio.get_running_loop().create_connection(_Exchange, self.host, self.port)
        return conn

    def _take_idle(self) -> _Exchange | None:
        """An idle keep-alive connection the server has not closed, if there is one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.open:
                return conn
        return None

    async def _exchange(self, data: bytes) -> tuple[int, str | None]:
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        try:
            answer = await conn.exchange(data)
        except ConnectionError:
            if not (reused and not conn._buf):
                raise
            conn = await self._connect()  # the server closed it while idle: retry once, as httpx does
            answer = await conn.exchange(data)
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
        if conn.open:
            self._idle.append(conn)
        return answer

    async def send(self, call: Call) -> tuple[int, str | None]:
        async with asyncio.timeout(self.timeout_s):  # a timer on this task; wait_for would add a task
            return await self._exchange(self._bytes(call))

    async def __aenter__(self) -> "RawHttp":
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


class HttpxClient:
    def __init__(self, url: str, limit: int, timeout_s: float) -> None:
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s)

    async def send(self, call: Call) -> tuple[int, str | None]:
        r = await self.client.request(call.method, call.path, content=call.content, headers=call.headers)
        return r.status_code, r.headers.get("retry-after")

    async def __aenter__(self) -> "HttpxClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _client(url: str, connections: int, timeout_s: float, raw: bool) -> HttpxClient | RawHttp:
    return (RawHttp if raw else HttpxClient)(url, connections, timeout_s)


async def _send(client: HttpxClient | RawHttp, call: Call, run: Run, t_sched: float, t0: float) -> None:
    lag = time.perf_counter() - t_sched  # the client's own backlog (its event loop), not the server's
    try:
        status, retry = await client.send(call)
    except (httpx.HTTPError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        status, retry = 0, None
        run.errors[type(e).__name__] += 1
    now = time.perf_counter()
    run.samples.append(Sample(t_sched - t0, now - t_sched, status, retry, lag))


async def closed_loop(url: str, call: Call, concurrency: int, duration_s: float, *,
                      timeout_s: float = 30.0, raw: bool = False) -> Run:
    """`concurrency` requests in flight for `duration_s`: each answer sends the next request."""
    if raw:
        return await _RawClosedLoop(url, call, concurrency, duration_s, timeout_s).run()
    run = Run()
    async with _client(url, concurrency, timeout_s, raw) as client:
        t0 = time.perf_counter()
        stop = t0 + duration_s

        async def worker() -> None:
            while (t := time.perf_counter()) < stop:
                await _send(client, call, run, t, t0)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), duration_s + timeout_s + 5)
        run.duration_s = time.perf_counter() - t0
    return run


def _arrivals(schedule: list[tuple[float, float]], rng: random.Random) -> tuple[list[float], float]:
    """Poisson arrival times (seconds from the start) along [(rate, seconds), ...], and the total span."""
    times: list[float] = []
    seg_start = 0.0
    for seg_rate, seg_s in schedule:
        t, seg_end = seg_start, seg_start + seg_s
        while (t := t + rng.expovariate(seg_rate)) < seg_end:
            times.append(t)
        seg_start = seg_end
    return times, seg_start


async def open_loop(url: str, call: Call, rate: float | list[tuple[float, float]], duration_s: float = 0.0, *,
                    seed: int = 0, max_in_flight: int = 512, timeout_s: float = 30.0, raw: bool = False) -> Run:
    """Poisson arrivals at `rate`/s for `duration_s`, or along a schedule [(rate, seconds), ...] run
    back to back (baseline -> surge -> recovery); then waits (at most timeout_s) for stragglers.
    An arrival finding `max_in_flight` requests outstanding is not sent (`client_dropped`)."""
    schedule = [(float(rate), duration_s)] if isinstance(rate, (int, float)) else list(rate)
    times, span = _arrivals(schedule, random.Random(seed))
    if raw:
        return await _RawOpenLoop(url, call, times, span, max_in_flight, timeout_s).run()
    run = Run()
    tasks: set[asyncio.Task[None]] = set()
    async with _client(url, max_in_flight, timeout_s, raw) as client:
        t0, run.started_at = time.perf_counter(), time.time()
        for t in times:
            delay = t0 + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_in_flight:
                run.client_dropped += 1
                continue
            task = asyncio.create_task(_send(client, call, run, t0 + t, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=timeout_s + 5)
            for task in pending:
                task.cancel()
        run.duration_s = max(time.perf_counter() - t0, span)
    return run


class _RawOpenLoop:
    """The raw client's open loop on callbacks alone: one timer wakes the sender for the arrivals due,
    each answer is recorded by the connection's callback, and one sweep every 100 ms or so times out
    exchanges older than `timeout_s` -- no task, future or timer per request. Its CPU a request is
    what the overload benchmark's 5x surge pays on the same cores as the server (0.118 ms a request
    with a task per request, bench/results/overload-2026-12-03-gc-ab.md)."""

    def __init__(self, url: str, call: Call, times: list[float], span: float, max_in_flight: int,
                 timeout_s: float) -> None:
        self.client = RawHttp(url, max_in_flight, timeout_s)
        self.data = self.client._bytes(call)
        self.times, self.span, self.max_in_flight, self.timeout_s = times, span, max_in_flight, timeout_s
        self.run_ = Run()
        self.busy: set[_Exchange] = set()
        self.in_flight = 0  # busy exchanges and connections being opened
        self.next = 0  # index of the next arrival
        self.t0 = 0.0

    async def run(self) -> Run:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.t0, self.run_.started_at = time.perf_counter(), time.time()
        self._fire()
        self._sweep()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), self.span + self.timeout_s + 5)
        except TimeoutError:
            pass
        finally:
            self.timer.cancel()
            self.sweeper.cancel()
            for conn in [*self.client._idle, *self.busy]:  # stragglers past the wait are not samples
                conn.callback = None
                if conn.transport is not None:
                    conn.transport.abort()
        self.run_.duration_s = max(time.perf_counter() - self.t0, self.span)
        return self.run_

    def _fire(self) -> None:
        """Send every arrival that is due, then sleep until the next one. Due = within a millisecond:
        uvloop's timers have millisecond resolution and may fire that much early; waiting out the rest
        would spin the loop (as asyncio.sleep does, the arrival is then sent up to 1 ms early)."""
        now = time.perf_counter()
        times, t0 = self.times, self.t0
        while self.next < len(times) and t0 + times[self.next] <= now + 1e-3:
            self._issue(t0 + times[self.next], now)
            self.next += 1
        if self.next < len(times):
            self.timer = self.loop.call_later(max(0.0, t0 + times[self.next] - time.perf_counter()), self._fire)
        else:
            self.timer = self.loop.call_soon(self._maybe_done)

    def _issue(self, t_sched: float, now: float) -> None:
        if self.in_flight >= self.max_in_flight:
            self.run_.client_dropped += 1
            return
        self.in_flight += 1
        conn = self.client._take_idle()
        if conn is not None:
            self._start(conn, t_sched, now - t_sched, reused=True)
        else:
            self.loop.create_task(self._connect_and_start(t_sched, now - t_sched))

    async def _connect_and_start(self, t_sched: float, lag: float) -> None:
        try:
            conn = await asyncio.wait_for(self.client._connect(), self.timeout_s)
        except (OSError, TimeoutError) as e:
            self._record(t_sched, 0, None, lag, e)
            return
        self._start(conn, t_sched, lag, reused=False)

    def _start(self, conn: _Exchange, t_sched: float, lag: float, reused: bool) -> None:
        conn.t_sched, conn.lag, conn.reused, conn.t_sent = t_sched, lag, reused, time.perf_counter()
        self.busy.add(conn)
        conn.start(self.data, self._answered)

    def _answered(self, conn: _Exchange, answer: tuple[int, str | None] | None, exc: BaseException | None) -> None:
        self.busy.discard(conn)
        if isinstance(exc, ConnectionError) and conn.reused and not conn._buf:
            # the server closed it while idle: retry once on a new connection, as httpx does
            self.loop.create_task(self._connect_and_start(conn.t_sched, conn.lag))
            return
        if answer is None:
            self._record(conn.t_sched, 0, None, conn.lag, exc)
            return
        if conn.open:
            self.client._idle.append(conn)
        self._record(conn.t_sched, answer[0], answer[1], conn.lag, None)

    def _record(self, t_sched: float, status: int, retry: str | None, lag: float, exc: BaseException | None) -> None:
        if exc is not None:
            self.run_.errors[type(exc).__name__] += 1
        now = time.perf_counter()
        self.run_.samples.append(Sample(t_sched - self.t0, now - t_sched, status, retry, lag))
        self.in_flight -= 1
        self._answered_at(now)

    def _answered_at(self, now: float) -> None:
        """An exchange has ended (`in_flight` counts it no more)."""
        if self.in_flight == 0 and self.next >= len(self.times):
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self.in_flight == 0 and not self.done.done():
            self.done.set_result(None)

    def _sweep(self) -> None:
        """Time out the exchanges sent more than timeout_s ago (status 0, TimeoutError)."""
        now = time.perf_counter()
        for conn in [c for c in self.busy if now - c.t_sent > self.timeout_s]:
            self.busy.discard(conn)
            conn.callback = None
            if conn.transport is not None:
                conn.transport.abort()
            self._record(conn.t_sched, 0, None, conn.lag, TimeoutError(f"no answer within {self.timeout_s} s"))
        self.sweeper = self.loop.call_later(min(0.1, self.timeout_s / 4), self._sweep)


class _RawClosedLoop(_RawOpenLoop):
    """closed_loop on the raw client's callbacks: `concurrency` requests start at once, and the callback
    that records an answer sends the next request until `duration_s` is over -- no coroutine, future or
    timer per request, as in the open loop. Against `dermagan serve --workers 2` at c=16 and 64
    (2026-12-03, two alternating A/Bs) it costs ~100 µs of CPU a request, where a coroutine per unit of
    concurrency cost ~130."""

    def __init__(self, url: str, call: Call, concurrency: int, duration_s: float, timeout_s: float) -> None:
        super().__init__(url, call, [], duration_s, concurrency, timeout_s)

    def _fire(self) -> None:
        now = time.perf_counter()
        for _ in range(self.max_in_flight):
            self._issue(now, now)
        self.timer = self.loop.call_later(self.span, self._maybe_done)  # only if nothing is in flight

    def _answered_at(self, now: float) -> None:
        if now < self.t0 + self.span:
            self._issue(now, now)
        elif self.in_flight == 0:
            self._maybe_done()


def run(coro: Any) -> Any:
    """Run a load coroutine on uvloop where it is installed (the serve extras bring it), else asyncio.

    The client shares the cores with the server it measures; on uvloop the raw client spends about a
    fifth less CPU a request (0.27-0.28 vs 0.34 ms in an open loop at 200/s; the overload reports give
    the load generator's CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def publish(report: str, out: str | Path | None) -> None:
    """Print a benchmark's Markdown report, and write it to `out` (bench/results/...) when given."""
    print(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            f.write(report)


def timed(fn, *, min_s: float = 0.5, min_n: int = 3, cpu: bool = False) -> float:
    """Seconds per call (median of repeated calls for at least min_s); `cpu`: this thread's CPU time
    (what the work costs, whatever else the machine runs)."""
    clock = time.thread_time if cpu else time.perf_counter
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(times) < min_n or time.perf_counter() < t_end:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def gpu_name() -> str | None:
    """The first NVIDIA GPU as nvidia-smi names it (name, memory, driver), or None where there is none."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


# ---- summaries -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summarize(run: Run, *, since_s: float = 0.0, until_s: float | None = None) -> dict[str, Any]:
    """Throughput and latency of the samples sent in [since_s, until_s)."""
    until = run.duration_s if until_s is None else until_s
    span = max(until - since_s, 1e-9)
    window = [s for s in run.samples if since_s <= s.t < until]
    ok = [s.latency_s for s in window if s.status == 200]
    codes = Counter(s.status for s in window if s.status != 200)
    rejected = [s for s in window if s.status == 503]
    return {
        "n": len(window),
        "rps": len(window) / span,
        "ok_rps": len(ok) / span,
        "p50_ms": 1e3 * percentile(ok, 50),
        "p99_ms": 1e3 * percentile(ok, 99),
        "p999_ms": 1e3 * percentile(ok, 99.9),
        "max_ms": 1e3 * max(ok) if ok else math.nan,
        "errors": dict(sorted(codes.items())),
        "rejected_p99_ms": 1e3 * percentile([s.latency_s for s in rejected], 99),
        "rejected_without_retry_after": sum(1 for s in rejected if s.headers_read and s.retry_after is None),
        "rejected_checked": sum(1 for s in rejected if s.headers_read),  # 503s whose headers were read
        # open loop: p99 of how late the client sent (already inside every latency above)
        "send_lag_p99_ms": 1e3 * percentile([s.lag_s for s in window], 99),
        "client_dropped": run.client_dropped,
    }


H2LOAD_SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                            r"(\d+) errored, (\d+) timeout")


def _h2load_exe() -> str:
    """The h2load executable; RuntimeError where it is not installed."""
    import shutil

    exe = shutil.which("h2load")
    if exe is None:
        raise RuntimeError("h2load is not installed (apt-get install nghttp2-client)")
    return exe


def h2load_version() -> str:
    """h2load's version ("nghttp2/1.52.0"); RuntimeError where it is not installed."""
    import subprocess

    out = subprocess.run([_h2load_exe(), "--version"], capture_output=True, text=True).stdout.split()
    return out[-1] if out else "?"


async def h2load(url: str, call: Call, rate: float | None, duration_s: float, *, delay_s: float = 0.0,
                 clients: int = 1024, timeout_s: float = 30.0) -> tuple[list[tuple[float, int, float]], dict[str, int], float]:
    """`rate` req/s of `call` from nghttp2's h2load (C++; Debian/Ubuntu package nghttp2-client) for
    `duration_s`, starting `delay_s` from now: HTTP/1.1, `clients` keep-alive connections at
    rate / clients requests a second each (h2load --rps: every connection starts at the same instant and
    repeats on the same period, so the requests come in bursts of `clients`, not as a Poisson stream --
    measured 2026-12-05: 1024 at once every 1.2 s); rate None: a closed loop, each connection
    sending its next request when the last is answered. On the server's own cores it costs less than
    half the raw client's CPU a request (2026-12-03: ~35 vs ~75 µs open loop, ~100 closed loop).

    Returns (rows, counts, cpu_s): rows (start, status, latency_s) with `start` in time.time() seconds,
    as its --log-file writes them; counts from its summary (total, started, done, succeeded, failed,
    errored, timeout); cpu_s its user + system CPU. Its latency runs from when the request was sent
    (an h2load connection waits for its previous answer), not from a scheduled arrival."""
    import resource
    import tempfile

    exe = _h2load_exe()
    await asyncio.sleep(delay_s)
    with tempfile.TemporaryDirectory(prefix="dermagan-h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log.tsv"
        body.write_bytes(call.content)
        pace = ["--rps", f"{rate / clients:.6f}"] if rate is not None else []
        argv = [exe, "--h1", "-t", "1", "-c", str(clients), *pace, "-D", f"{round(duration_s * 1000)}ms",
                "-N", f"{round(timeout_s * 1000)}ms", "--log-file", str(log), "-d", str(body),
                *(x for k, v in call.headers.items() for x in ("-H", f"{k}: {v}")), url.rstrip("/") + call.path]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = out.decode(errors="replace")
        m = H2LOAD_SUMMARY.search(text)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"h2load failed (exit {proc.returncode}): {text[-2000:]}")
        rows = []
        for line in log.read_text().splitlines():
            start_us, status, latency_us = line.split("\t")[:3]
            rows.append((int(start_us) / 1e6, int(status), int(latency_us) / 1e6))
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return rows, dict(zip(names, map(int, m.groups()))), cpu


def add_h2load(run: Run, rows: list[tuple[float, int, float]], counts: dict[str, int], at_s: float) -> None:
    """Put h2load's answers on `run`'s timeline (its started_at); its errored and timed-out requests,
    which its log leaves out, become status-0 samples at `at_s`."""
    run.samples += [Sample(start - run.started_at, latency, status, None, 0.0, headers_read=False)
                    for start, status, latency in rows]
    lost = counts["errored"] + counts["timeout"]
    run.samples += [Sample(at_s, 0.0, 0, None, 0.0, headers_read=False)] * lost
    if lost:
        run.errors["h2load errored or timed out"] += lost
    run.samples.sort(key=lambda x: x.t)


async def h2load_closed_loop(url: str, call: Call, concurrency: int, duration_s: float, *,
                             timeout_s: float = 30.0) -> Run:
    """closed_loop's cell measured by h2load: `concurrency` connections, one request in flight each."""
    started = time.time()
    rows, counts, _ = await h2load(url, call, None, duration_s, clients=concurrency, timeout_s=timeout_s)
    run = Run(duration_s=duration_s, started_at=started)
    add_h2load(run, rows, counts, at_s=0.0)
    return run


def merge(runs: list[Run]) -> Run:
    """Several runs of one cell (e.g. interleaved rounds) as one, end to end in time."""
    out, offset = Run(), 0.0
    for r in runs:
        out.samples += [Sample(x.t + offset, x.latency_s, x.status, x.retry_after, x.lag_s, x.headers_read)
                        for x in r.samples]
        out.client_dropped += r.client_dropped
        out.errors.update(r.errors)
        offset += r.duration_s
    out.duration_s = offset
    return out


def drift(measurements: list[float], limit: float = 0.15) -> float | None:
    """How far apart repeated measurements of one rate are (max / min - 1) where that is over `limit`, else None:
    this shared box's cores change speed within minutes, and a report says so when a run saw it."""
    spread = max(measurements) / min(measurements) - 1
    return spread if spread > limit else None


def per_second(run: Run, what: str = "p99_ms") -> list[float]:
    """One summary value per whole second of the run (for recovery curves)."""
    return [summarize(run, since_s=i, until_s=i + 1)[what] for i in range(int(run.duration_s))]


_BATCH_LINE = re.compile(r"^dermagan_batch_size_(sum|count)\{[^}]*\} (\S+)$", re.M)


def batch_stats(url: str, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(sum, count) of dermagan_batch_size over every model, from GET /metrics."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH_LINE.findall(text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    rows, batches = after[0] - before[0], after[1] - before[1]
    return rows / batches if batches else math.nan


def fmt_errors(errors: dict[int, int]) -> str:
    return ", ".join(f"{code or 'conn'}: {n}" for code, n in errors.items()) or "none"


# ---- the server under test: a subprocess on loopback -----------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(stat_paths: Iterable[str]) -> float:
    """User + system CPU seconds in /proc stat files (a process's, or a thread's under task/);
    those that vanished meanwhile count nothing."""
    import os

    total = 0
    for path in stat_paths:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server started as `argv` (its own process group), ready when GET `ready_path` is 200."""

    def __init__(self, name: str, argv: list[str], port: int, *, env: dict[str, str] | None = None,
                 ready_path: str = "/readyz", log_path: str | None = None) -> None:
        self.name, self.argv, self.port, self.env, self.ready_path = name, argv, port, env, ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path or f"/tmp/dermagan-bench-{name}-{port}.log"
        self.proc: Any = None

    @classmethod
    def attach(cls, url: str, pid: int) -> "ServerProcess":
        """A server started elsewhere (e.g. a container's or a variant's): measured, never stopped."""
        import types

        server = cls("attached", [], int(url.rsplit(":", 1)[1]))
        server.url = url.rstrip("/")
        server.proc = types.SimpleNamespace(pid=pid, returncode=None, poll=lambda: None)
        server.attached = True
        return server

    def start(self, timeout_s: float = 120) -> "ServerProcess":
        import os
        import subprocess

        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})}, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:  # its last words in the error too: a remote machine's /tmp is lost
                with open(self.log_path, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n{tail}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server's process and all its descendants (LitServe runs several)."""
        import os

        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def rss_mb(self) -> float:
        """Resident memory of the server's process tree, MiB."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total / 1024

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the server's process tree."""
        return proc_cpu_s(f"/proc/{pid}/stat" for pid in self.pids())

    def pause(self) -> None:
        """SIGSTOP the whole process group: no CPU at all while another server is measured."""
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM the process group, SIGKILL after `timeout_s`; returns the exit status."""
        import os
        import signal
        import subprocess

        if self.proc is None or getattr(self, "attached", False):
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:  # LitServe's workers may outlive their parent: end the rest of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


def dermagan_server(models_dir: str, port: int, **settings: object) -> ServerProcess:
    """`dermagan serve` on loopback with DERMAGAN_* settings (keys lower-case, e.g. max_batch=8)."""
    import sys

    env = {"DERMAGAN_" + k.upper(): (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
           for k, v in settings.items()}
    argv = [sys.executable, "-m", "dermagan.cli", "serve", "--models-dir", str(models_dir),
            "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess("dermagan", argv, port, env=env)


def machine() -> dict[str, str]:
    """What ran the benchmark: CPU, cores, versions, date, git commit."""
    import datetime
    import importlib.metadata as md
    import os
    import platform
    import subprocess

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("onnxruntime", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "litserve", "httpx", "numpy", "pillow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "-"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "service", "bench")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online)",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "git commit": git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes in service/ or bench/)" if dirty else ""),
    }


class RssSampler:
    """Samples a server's RSS (MiB) every `every_s` in a thread: `with RssSampler(server) as rss: ...`."""

    def __init__(self, server: ServerProcess, every_s: float = 0.5) -> None:
        import threading

        self.server, self.every_s = server, every_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.server.rss_mb()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def slope_mb_per_min(self, skip_s: float = 0.0) -> float:
        """Least-squares slope of RSS over time (after `skip_s`), MiB per minute."""
        pts = [(t, m) for t, m in self.samples if t >= skip_s]
        if len(pts) < 2:
            return math.nan
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mm = sum(m for _, m in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        return 60 * sum((t - mt) * (m - mm) for t, m in pts) / var if var else math.nan


def saturation(server: ServerProcess, call: Call, seconds: float, concurrency: tuple[int, ...] = (16, 32), *,
               raw: bool = False) -> float:
    """Saturation throughput: the best closed-loop 200s/s over a few concurrencies."""
    return max(summarize(run(closed_loop(server.url, call, c, seconds, raw=raw)))["ok_rps"] for c in concurrency)
