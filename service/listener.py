"""The HTTPS listener of `dermagan serve` (DERMAGAN_TLS_CERTFILE / _KEYFILE): it accepts connections itself, so
that a client speaking plain HTTP to the HTTPS port is told so.

The event loop's own TLS server (asyncio's or uvloop's `create_server(ssl=...)`) hands a connection's first
bytes to OpenSSL; a plain-HTTP request there fails the handshake and the connection is closed without an
answer and without a log line -- `curl http://host:8000/readyz` says "Empty reply from server", a browser
"connection reset", and nothing on the server says why. nginx answers such a request 400 "The plain HTTP
request was sent to HTTPS port". Here each accepted connection's first byte is peeked (MSG_PEEK: nothing is
consumed) and:

- a TLS record, or anything else that is not a letter, goes to the loop's TLS transport exactly as before
  (`loop.connect_accepted_socket(..., ssl=context)`, the transport `create_server` makes: the same handshake,
  certificate and protocol);
- a letter -- the first of an HTTP method -- is answered the service's JSON 400 naming the mistake, in clear
  (the answer holds that text and nothing else), counted as `not_http` and logged with the client's address
  (the Gate's `not_http`, as for a TLS handshake at a plain-HTTP port). The rest of what the client sends is
  read and dropped for a moment, never kept, so it reads the answer rather than a reset.

A connection that sends nothing is closed after DERMAGAN_KEEP_ALIVE_S, as on the plain-HTTP port, and a TLS handshake
must be done within DERMAGAN_HEAD_TIMEOUT_S, as a request head must arrive (the loop's TLS server waited 60 s for
either: a slow-handshake client held its connection that long). Once the handshake is done the connection is uvicorn's, through its own
protocol class and `server_state`, so its drain on SIGTERM, its connection count and every protocol check
(shedding.py) are unchanged. `Server` is uvicorn's server with this listener wherever it has TLS and sockets;
`WorkerProcess` is uvicorn's worker process running that server (`dermagan serve --workers N`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import uvicorn
from uvicorn.supervisors.multiprocess import Process

from dermagan.service.app import LINGER_BYTES, LINGER_S, WATCH_KEY

log = logging.getLogger("dermagan.service")

#: accept() failures that mean "out of a resource for now" (asyncio's own list): accepting pauses this long
ACCEPT_PAUSE_S = 1.0
_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def plain_http_answer(app_state: dict[str, Any], client: tuple[str, int] | None) -> bytes:
    """The whole 400 answer to plain HTTP at the HTTPS port: through the Gate (counted, logged, the service's JSON
    error) when the app has one, else a fixed one."""
    watch = app_state.get(WATCH_KEY)
    if watch is not None:
        head, body = watch.not_http(client, "", "http")
    else:
        body = (b'{"error":"bad_request","detail":"plain HTTP arrived at this HTTPS port: use https://",'
                b'"request_id":null}')
        head = b"content-type: application/json\r\ncontent-length: %d\r\nx-content-type-options: nosniff\r\n" % len(body)
    return b"HTTP/1.1 400 Bad Request\r\n" + head + b"connection: close\r\n\r\n" + body


class PlainHttpAnswer(asyncio.Protocol):
    """A connection that opened with plain HTTP at the HTTPS port: the answer is written at once, the connection
    half-closed, and what the client still sends dropped (up to LINGER_BYTES, for LINGER_S) before closing."""

    def __init__(self, answer: Callable[[tuple[str, int] | None], bytes]) -> None:
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.left = LINGER_BYTES
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass of it)
        peer = transport.get_extra_info("peername")
        transport.write(self.answer(tuple(peer[:2]) if peer else None))
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)  # dropped, never kept
        if self.left < 0 and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class TlsListener:
    """One listening socket served over TLS, with plain HTTP answered (above). Offers what uvicorn's `Server` uses
    of the loop's servers: `close()` (stop accepting; connections still sniffing or in their handshake are
    closed -- not yet accepted as requests) and `await wait_closed()`."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 context: ssl.SSLContext, app_state: dict[str, Any], *, backlog: int, quiet_s: float,
                 handshake_s: float | None = None) -> None:
        self.sock, self.factory, self.context, self.app_state = sock, protocol_factory, context, app_state
        self.backlog, self.quiet_s, self.handshake_s = backlog, quiet_s, handshake_s
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self._waiting: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}  # fd -> (connection, its timer)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unstarted: dict[asyncio.Task[None], socket.socket] = {}  # tasks not run yet -> the socket they will hand over
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._context = contextvars.copy_context()  # connections run in a copy of it, as in the loop's own server

    def start(self) -> TlsListener:
        self.sock.setblocking(False)
        self.sock.listen(self.backlog)
        self.loop.add_reader(self.fd, self._accept)
        return self

    # ---- accepting and sniffing

    def _accept(self) -> None:
        for _ in range(self.backlog):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client left while queued
                continue
            except OSError as e:
                if e.errno not in _OUT_OF:
                    raise
                log.error("not accepting connections for %g s: %s (raise the open-files limit?)", ACCEPT_PAUSE_S, e)
                self.loop.remove_reader(self.fd)
                self._resume = self.loop.call_later(ACCEPT_PAUSE_S, self._accept_again)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # as the loop's server does (asyncio's connect_accepted_socket does not)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._wait_for_first_byte(conn)

    def _accept_again(self) -> None:
        self._resume = None
        if not self._closed:
            self.loop.add_reader(self.fd, self._accept)

    def _wait_for_first_byte(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        self._waiting[fd] = (conn, self.loop.call_later(self.quiet_s, self._drop, fd))
        self.loop.add_reader(fd, self._first_byte, fd)

    def _drop(self, fd: int) -> None:
        """A connection that said nothing within DERMAGAN_KEEP_ALIVE_S (or one still silent at shutdown)."""
        conn, timer = self._waiting.pop(fd)
        timer.cancel()
        self.loop.remove_reader(fd)
        conn.close()

    def _first_byte(self, fd: int) -> None:
        conn, timer = self._waiting[fd]
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # (spurious wake-up) still waiting
        except OSError:
            first = b""
        del self._waiting[fd]
        timer.cancel()
        self.loop.remove_reader(fd)
        if not first:  # gone (or reset) before saying anything
            conn.close()
            return
        task = self.loop.create_task(self._connect(conn, plain=first.isalpha()), context=self._context.copy())
        self._unstarted[task] = conn
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, *, plain: bool) -> None:
        """Hand the connection to a transport: plain HTTP (a letter: GET, POST, ...) to its 400, anything else to
        TLS (bytes that are not TLS fail there, as they always did)."""
        del self._unstarted[asyncio.current_task()]  # type: ignore[arg-type]  # the transport owns the socket now
        try:
            if plain:
                await self.loop.connect_accepted_socket(
                    lambda: PlainHttpAnswer(lambda client: plain_http_answer(self.app_state, client)), conn)
            else:
                await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.context,
                                                        ssl_handshake_timeout=self.handshake_s)
        except (OSError, asyncio.TimeoutError):
            # a failed handshake or a client that left during it: the transport closed its socket; not logged, as
            # the loop's TLS server does not log them (a scanner would fill the log)
            pass

    # ---- what uvicorn's Server calls

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            with contextlib.suppress(ValueError, OSError):  # (the socket may already be closed)
                self.loop.remove_reader(self.fd)
        for fd in list(self._waiting):
            self._drop(fd)
        for conn in self._unstarted.values():  # their tasks, cancelled before they ran, will not close them
            conn.close()
        self._unstarted.clear()
        for task in self._tasks:  # handshakes under way: no request was accepted on them yet
            task.cancel()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Server(uvicorn.Server):
    """uvicorn's server; with TLS and given sockets, each socket is served by a `TlsListener` instead of the
    loop's TLS server. `on_listening` (optional) is called once the server listens."""

    on_listening: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        context = self.config.ssl
        if context is None or not sockets:
            await super().startup(sockets)
        else:
            await super().startup([])  # the app's lifespan (exits on its failure), and no listener
            loop = asyncio.get_running_loop()
            config, state = self.config, self.lifespan.state

            def create_protocol() -> asyncio.Protocol:
                return config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                                  app_state=state, _loop=loop)

            watch = state.get(WATCH_KEY)  # a handshake is bounded as a request head is (DERMAGAN_HEAD_TIMEOUT_S)
            self.servers = [TlsListener(sock, create_protocol, context, state, backlog=config.backlog,  # type: ignore[misc]
                                        quiet_s=config.timeout_keep_alive,
                                        handshake_s=watch.head_timeout_s if watch is not None else None).start()
                            for sock in sockets]
        if self.started and self.on_listening is not None:
            self.on_listening()


class WorkerProcess(Process):
    """uvicorn's worker process (`dermagan serve --workers N`), running `Server`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = Server(config=self.config)
        return self._server
