"""service/listener.py's TlsListener on real sockets, on asyncio's event loop and on uvloop's: TLS clients get the
given protocol over TLS, a plain-HTTP request gets the 400 (its body read and dropped, so the client reads the answer
rather than a reset), a silent connection is closed after `quiet_s`, and `close()` stops accepting and closes what
was not handed over yet. (Through `dermagan serve`, with the Gate's answer and the drain: tests/e2e/test_tls.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from dermagan.service import listener

trustme = pytest.importorskip("trustme", reason="needs trustme (the test extra)")

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, a client context that trusts it)."""
    ca = trustme.CA()
    server, client = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.create_default_context()
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca.configure_trust(client)
    return server, client


class Echo(asyncio.Protocol):
    """The application's protocol: answers each chunk with b"echo:" + it."""

    made: list[Echo] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Echo.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)  # type: ignore[attr-defined]


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


@contextlib.asynccontextmanager
async def listening(server_ctx: ssl.SSLContext, quiet_s: float = 5.0,
                    handshake_s: float | None = None) -> AsyncIterator[tuple[listener.TlsListener, int]]:
    """A started TlsListener serving Echo on a free loopback port, and the port; closed (and waited for) at exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Echo.made = []
    tls = listener.TlsListener(sock, Echo, server_ctx, {}, backlog=16, quiet_s=quiet_s, handshake_s=handshake_s).start()
    try:
        yield tls, sock.getsockname()[1]
    finally:
        tls.close()
        await tls.wait_closed()
        sock.close()


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def over_tls(port: int, client_ctx: ssl.SSLContext, data: bytes) -> bytes:
    """Send `data` over a new TLS connection; what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(data)
        return s.recv(100)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_tls_clients_get_the_protocol_over_tls(loop_name: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        async with listening(server_ctx) as (tls, port):
            assert await in_thread(lambda: over_tls(port, client_ctx, b"hello")) == b"echo:hello"
            assert len(Echo.made) == 1 and Echo.made[0].transport.get_extra_info("ssl_object") is not None

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_plain_http_is_answered_400_and_its_body_dropped(loop_name: str,
                                                         contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, _ = contexts
    body = b"x" * 300_000  # arriving after the answer: closing without reading it would reset the connection

    async def main() -> None:
        async with listening(server_ctx) as (tls, port):
            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"POST /eczema/add HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
                    time.sleep(0.2)  # the body arrives after the answer is written, as an upload's does
                    s.sendall(body)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                    return answer

            answer = await in_thread(client)
            head, _, text = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in head
            assert b"plain HTTP arrived at this HTTPS port: use https://" in text
            assert b"content-length: %d" % len(text) in head
            assert Echo.made == []  # the application never saw it

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_silent_connection_is_closed_after_quiet_s_and_close_ends_the_rest(
        loop_name: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, _ = contexts

    async def main() -> None:
        async with listening(server_ctx, quiet_s=0.3) as (tls, port):
            def silent() -> float:
                t0 = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    assert s.recv(1) == b""  # closed by the server
                return time.monotonic() - t0

            waited = await in_thread(silent)
            assert 0.25 < waited < 3
            assert tls._waiting == {}

            # at close(): a connection still silent is closed at once, and nothing more is accepted
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            while not tls._waiting:
                await asyncio.sleep(0.01)
            tls.close()
            await tls.wait_closed()
            assert tls._waiting == {}
            assert await in_thread(lambda: s.recv(1)) == b""
            s.close()
            tls.sock.close()
            with pytest.raises(OSError):
                await in_thread(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_failed_handshake_closes_its_connection_and_the_listener_goes_on(
        loop_name: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        async with listening(server_ctx) as (tls, port):
            def garbage() -> bytes:  # not a letter, not TLS: the handshake fails, the connection is closed
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"\x00\x01\x02\x03" * 64)
                    try:
                        return s.recv(100)
                    except ConnectionResetError:
                        return b""

            def untrusting() -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass

            await in_thread(garbage)
            with pytest.raises(ssl.SSLCertVerificationError):
                await in_thread(untrusting)

            assert await in_thread(lambda: over_tls(port, client_ctx, b"still")) == b"echo:still"
            while tls._tasks:
                await asyncio.sleep(0.01)

    run(loop_name, main)


def test_without_the_gate_the_answer_is_a_fixed_json_400() -> None:
    """Without the app's Gate (app_state without its watch) the answer is a fixed JSON 400."""
    answer = listener.plain_http_answer({}, ("127.0.0.1", 1))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"content-length: %d" % len(body) in head
    assert json.loads(body)["error"] == "bad_request"


class _OutOfFilesOnce(socket.socket):
    """A listening socket whose first accept() fails as a process out of open files does."""

    failed = False

    def accept(self):  # type: ignore[no-untyped-def]
        if not type(self).failed:
            type(self).failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_out_of_open_files_pauses_accepting_says_so_and_serves_the_waiting_connection_after(
        loop_name: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server_ctx, client_ctx = contexts
    monkeypatch.setattr(listener, "ACCEPT_PAUSE_S", 0.2)
    _OutOfFilesOnce.failed = False

    async def main() -> None:
        sock = _OutOfFilesOnce()
        sock.bind(("127.0.0.1", 0))
        tls = listener.TlsListener(sock, Echo, server_ctx, {}, backlog=16, quiet_s=5).start()
        port = sock.getsockname()[1]
        t0 = time.monotonic()
        assert await in_thread(lambda: over_tls(port, client_ctx, b"later")) == b"echo:later"
        assert time.monotonic() - t0 >= 0.15  # it waited in the backlog through the pause
        tls.close()
        await tls.wait_closed()
        sock.close()

    with caplog.at_level(logging.ERROR, logger="dermagan.service"):
        run(loop_name, main)
    assert _OutOfFilesOnce.failed
    assert any("not accepting connections for 0.2 s" in r.getMessage() and "open-files" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_handshake_that_stalls_is_closed_after_handshake_s(loop_name: str,
                                                            contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, _ = contexts

    async def main() -> None:
        async with listening(server_ctx, handshake_s=0.3) as (tls, port):
            def stalled() -> float:  # the first bytes of a TLS record, then nothing
                t0 = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"\x16\x03\x01")
                    try:
                        assert s.recv(100) == b""
                    except ConnectionResetError:
                        pass
                return time.monotonic() - t0

            waited = await in_thread(stalled)
            assert 0.25 < waited < 3, waited

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_between_the_first_byte_and_the_hand_over_closes_that_connection(
        loop_name: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A shutdown that comes after a connection's first byte was read but before its task ran: the task is cancelled
    before it could give the socket to a transport, so close() closes it (it would stay open otherwise)."""
    server_ctx, _ = contexts

    async def main() -> None:
        async with listening(server_ctx) as (tls, port):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            while not tls._waiting:  # accepted, waiting for its first byte
                await asyncio.sleep(0.005)
            fd, (conn, _) = next(iter(tls._waiting.items()))
            client.sendall(b"\x16\x03\x01")  # (from here on the loop does not run until close())
            assert select.select([conn], [], [], 5)[0]  # its first bytes are there
            tls._first_byte(fd)  # what the reader callback does; then, before the loop runs the task:
            assert list(tls._unstarted.values()) == [conn]
            tls.close()
            await tls.wait_closed()
            assert conn.fileno() == -1 and not tls._unstarted and not tls._tasks
            try:
                assert await in_thread(lambda: client.recv(1)) == b""
            except ConnectionResetError:
                pass
            client.close()

    run(loop_name, main)
