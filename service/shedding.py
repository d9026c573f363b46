"""The HTTP protocol `dermagan serve` runs: uvicorn's httptools protocol, refusing work before an ASGI
task exists while the service is full, and closing connections that stall -- answers nobody reads,
silent connections, request heads that do not arrive.

During an overload most requests are refused (503 `queue_full` + Retry-After). Through ASGI each
refusal still costs uvicorn a request cycle, an asyncio task, the middleware chain, two socket
writes, and the event loop's I/O for all of it: about 73 µs of event-loop CPU a refusal on the
2-core benchmark machine (bench/results/cpu-split-2026-12-03.md), 0.14 of its 2 cores at 5x the
saturation rate. `SheddingHttpToolsProtocol` is uvicorn's httptools protocol with one addition: when
a request's head is complete, it asks the app's `Gate` (through the lifespan state, key `STATE_KEY`)
whether this request would be refused for admission; if so it writes the whole answer -- the same
bytes the Gate would send, X-Request-ID included, and the same access line (folded, as the Gate folds those of
its own refusals: `app.FoldedRefusals`) -- in one write, ignores
the body as it arrives, and keeps the connection for the next request. Anything else, including every question the Gate cannot answer from the head
(API key wrong, body too large, a pipelined request, an upgrade), goes the usual ASGI way.

Answers nobody reads. Uvicorn writes an answer into the connection's buffer and the request is done (its
in-flight place given back); what the socket cannot take yet waits in the process, and uvicorn has no
timeout for it. A client that stops reading -- hung, or gone without a FIN or RST reaching us, or on purpose
-- pinned its answer (an edit of a 12 MP photo: ~36 MB as PNG) for as long as its connection lived, and a
shutdown waited for it until uvicorn's own limit. While the transport is paused for writing (its buffer
above the high-water mark), the protocol checks every DERMAGAN_SEND_IDLE_S whether the buffer shrank; if no
byte left, it aborts the connection (the buffer is freed) and tells the Gate (`Gate.answer_stalled`: a log
line with the request's ID, `send_stalled` counted). A client that reads, however slowly, is not cut: as
nginx's send_timeout, the limit is on the time between two successful writes. Under TLS the answer waits
below the TLS layer, in a transport this protocol cannot see; there each connection's TCP_USER_TIMEOUT
(Linux; set to the same limit) has the kernel reset a connection whose sent data the client has not taken
for that long (a zero window included, from Linux 5.11), and the ETIMEDOUT that follows is reported the same
way. (It never touches an idle connection: it counts only while sent data waits.)

Connections that say nothing, or trickle a request head. Uvicorn closes an idle keep-alive connection
after DERMAGAN_KEEP_ALIVE_S, but not a new one that has sent nothing, nor one that sends a head a byte at a
time (it has no header timeout): each held a file and some memory for as long as the client liked. Here a
new connection gets the keep-alive timer at once, and a request head must arrive whole within
DERMAGAN_HEAD_TIMEOUT_S of its first byte, else 408 `head_timeout` and the connection is closed (nginx's
client_header_timeout); the Gate counts it (`ConnectionWatch.head_timed_out`).

Bytes that are not HTTP. Uvicorn answers them a text/plain 400 and logs "Invalid HTTP request received." --
no client, no reason. Here the Gate counts each (`not_http`), logs the client and the parser's reason, and the
400 carries the service's JSON error; a TLS handshake arriving at a plain-HTTP port (a balancer's health check
or a client set to https://) and HTTP/2 with prior knowledge are named as such, with the fix.

Heads too large. httptools has no limit on a request head: one header of 83 MB sent within the head timeout was
held whole and answered 200 (RSS +160 MiB). A head over DERMAGAN_MAX_HEAD_BYTES is answered 431 `head_too_large`
and the connection closed, holding at most that plus one received chunk.

`dermagan serve` uses it whenever uvicorn runs on httptools (cli.http_stack); on h11 nothing changes.
It depends on the protocol's documented-by-code internals (`cycle`, `parser`, `app_state`,
`on_response_complete`, `on_message_begin`, `timeout_keep_alive_task` / `_handler`, `pause_writing`),
checked against the installed uvicorn by tests/service/test_shedding.py, tests/e2e/test_early_refusal.py
and tests/e2e/test_resilience.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol  # needs httptools

from dermagan.service.app import LINGER_BYTES, LINGER_S, STATE_KEY, WATCH_KEY, ConnectionWatch

#: (method, request target, header list, client (asked only when refusing), HTTP version) -> the answer's head
#: lines and body, or None; it logs the request's access line itself (uvicorn's own access log is off under
#: `dermagan serve`)
RefuseEarly = Callable[[bytes, bytes, list[tuple[bytes, bytes]], Callable[[], tuple[str, int] | None], str],
                       tuple[bytes, bytes] | None]


class _Answered:
    """Stands in for uvicorn's RequestResponseCycle of a request answered here: complete, so the
    protocol ignores its body and starts the next request's cycle as usual."""

    response_complete = True
    disconnected = False
    keep_alive = True

    class message_event:  # noqa: N801 (the cycle's attribute name)
        @staticmethod
        def set() -> None:
            pass


_ANSWERED = _Answered()


class SheddingHttpToolsProtocol(HttpToolsProtocol):
    _send_timer: asyncio.TimerHandle | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _spoke = False  # has the client sent a byte yet on this connection
    # the request head being read: open (begun, not complete), its bytes so far, begun within the current chunk
    _head_open = False
    _head_bytes = 0
    _head_fresh = False
    _head_over = False  # the head was whole but over the limit
    _lingering: int | None = None  # after a 431: bytes still to drop before closing (the client is still sending)
    _counted: Callable[[int], None] | None = None  # where this connection was counted open

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except for bytes that are not HTTP: uvicorn answers a text/plain 400 and logs "Invalid HTTP
        request received." with nothing else; here the Gate counts it, logs the client and what was wrong (a TLS
        handshake at this plain-HTTP port is named as such), and the 400 carries the service's JSON error."""
        if self._lingering is not None:  # answered and half-closed: what still comes is dropped
            self._lingering -= len(data)
            if self._lingering < 0:
                self.transport.close()
            return
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        first, self._spoke = not self._spoke, True
        if watch is None:
            super().data_received(data)
            return
        self._unset_keepalive_if_required()
        self._head_fresh = False
        try:
            self.parser.feed_data(data)
            if self._head_open:
                # Bytes of a head begun in an earlier chunk are all head (httptools holds a header's pieces
                # until it is whole); a head begun in this one was counted by on_url / on_header.
                self._head_bytes += 0 if self._head_fresh else len(data)
                if self._head_bytes > watch.max_head_bytes:
                    self._answer_and_linger(431, *watch.head_too_large())
        except httptools.HttpParserUpgrade:  # as uvicorn
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as e:
            if self._head_over:  # (raised by on_headers_complete)
                self._answer_and_linger(431, *watch.head_too_large())
                return
            opening = ("tls" if first and data[:2] == b"\x16\x03" else  # a TLS record: handshake, version 3.x
                       "h2" if first and data.startswith(b"PRI * HTTP/2.0") else "")  # HTTP/2's connection preface
            self._answer_and_close(400, *watch.not_http(self.client, str(e), opening))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        if watch is None:
            return
        self._counted = watch.connections
        self._counted(1)
        # A connection that says nothing is closed as an idle keep-alive one is (uvicorn arms that timer
        # only after an answer; the first data cancels it).
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            try:  # the kernel's own limit on data it sent and the client did not take (above)
                transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                                              max(1, round(watch.send_idle_s * 1000)))
            except (AttributeError, OSError):
                pass

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes, self._head_fresh = True, 0, True
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        if watch is not None and self._head_timer is None:
            self._head_timer = self.loop.call_later(watch.head_timeout_s, self._head_timed_out, watch)

    def _head_timed_out(self, watch: ConnectionWatch) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head, not read on while the answer before it runs: not the client's delay
            self._head_timer = self.loop.call_later(watch.head_timeout_s, self._head_timed_out, watch)
            return
        self._answer_and_close(408, *watch.head_timed_out())

    def _answer_and_linger(self, status: int, head: bytes, body: bytes) -> None:
        """Answer, then half-close and drop what the client is still sending (up to LINGER_BYTES, LINGER_S), so it
        reads the answer instead of a reset (a close with its bytes still arriving resets the connection)."""
        self._write_answer(status, head, body, keep_alive=False)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingering = LINGER_BYTES
        self.loop.call_later(LINGER_S, self.transport.close)

    def _answer_and_close(self, status: int, head: bytes, body: bytes) -> None:
        self._write_answer(status, head, body, keep_alive=False)
        self.transport.close()

    def _write_answer(self, status: int, head: bytes, body: bytes, keep_alive: bool) -> None:
        """Write a whole answer: the status line, the server's own headers (date), `head` (the answer's header
        lines), `connection: close` unless `keep_alive`, and the body."""
        content: list[Any] = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [head, b"\r\n" if keep_alive else b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(content))

    def pause_writing(self) -> None:
        super().pause_writing()
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        if watch is not None and self._send_timer is None:
            self._send_timer = self.loop.call_later(watch.send_idle_s, self._check_send, watch,
                                                    self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_send_watch()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        if watch is not None and isinstance(exc, TimeoutError):  # the kernel's TCP_USER_TIMEOUT
            self._report_stall(watch, None)
        if self._counted is not None:
            self._counted(-1)
            self._counted = None
        super().connection_lost(exc)

    def _stop_send_watch(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _check_send(self, watch: ConnectionWatch, before: int) -> None:
        """While writing is paused nothing more is written (uvicorn awaits the drain), so a buffer that did not
        shrink in `send_idle_s` seconds means the client took nothing."""
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if 0 < unsent < before:
            self._send_timer = self.loop.call_later(watch.send_idle_s, self._check_send, watch, unsent)
        elif unsent:
            sock = self.transport.get_extra_info("socket")
            try:  # a reset: the kernel drops what its own buffer holds too (else kept while closing)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (AttributeError, OSError):
                pass
            self.transport.abort()  # connection_lost(None) follows: reported here, once
            self._report_stall(watch, unsent)

    def _report_stall(self, watch: ConnectionWatch, unsent: int | None) -> None:
        scope = getattr(self.cycle, "scope", None)  # the last request of the connection (none: an early 503)
        watch.answer_stalled(scope.get("state", {}) if scope is not None else {}, self.client, unsent)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if self._head_fresh:  # (a head begun in an earlier chunk is counted by the chunk)
            self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if self._head_fresh:
            self._head_bytes += len(name) + len(value) + 4  # ": ", CRLF

    def on_headers_complete(self) -> None:
        self._head_open = False
        watch: ConnectionWatch | None = self.app_state.get(WATCH_KEY)
        if watch is not None and len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > watch.max_head_bytes:
            self._head_over = True  # whole, so counted exactly; no request is started
            raise ValueError("request head too large")
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        refuse: RefuseEarly | None = self.app_state.get(STATE_KEY)
        if (refuse is not None and (self.cycle is None or self.cycle.response_complete)
                and not self.parser.should_upgrade()):
            version = self.parser.get_http_version()
            answer = refuse(self.parser.get_method(), self.url, self.headers, self._client, version)
            if answer is not None:
                self._answer_now(version, *answer)
                return
        super().on_headers_complete()

    def _client(self) -> tuple[str, int] | None:
        """The client the access line names, as on the ASGI path: behind a proxy uvicorn trusts
        (FORWARDED_ALLOW_IPS, default loopback), its ProxyHeadersMiddleware's X-Forwarded-For client --
        that middleware's own rule, asked through the instance wrapping this app; else the peer. Whether
        the peer is trusted is settled once a connection."""
        trusted = self.__dict__.get("_peer_trusted")
        if trusted is None:
            proxy = self.app if isinstance(self.app, ProxyHeadersMiddleware) else None
            trusted = self._peer_trusted = bool(proxy and self.client and self.client[0] in proxy.trusted_hosts)
        if not trusted:
            return self.client
        forwarded = [value for name, value in self.headers if name == b"x-forwarded-for"]
        if not forwarded:
            return self.client
        host, port = self.app.trusted_hosts.get_trusted_client_address(b", ".join(forwarded).decode("latin1"))
        return (host, port) if host else self.client

    def _answer_now(self, version: str, head: bytes, body: bytes) -> None:
        keep_alive = version == "1.1" and self.parser.should_keep_alive()
        self.cycle = _ANSWERED  # type: ignore[assignment]
        self._write_answer(503, head, body, keep_alive)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # counts the request, re-arms keep-alive, resumes reading
