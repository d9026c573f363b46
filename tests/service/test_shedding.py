"""service/shedding.py's protocol on a fake transport: the bytes it writes for an early refusal,
the refused body skipped, Connection: close; the access line is the Gate's (refuse's) to log. (Over real HTTP, next to the
Gate's own answer: tests/e2e/test_early_refusal.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

pytest.importorskip("httptools")

import uvicorn  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from dermagan.service.app import STATE_KEY, WATCH_KEY, ConnectionWatch  # noqa: E402
from dermagan.service.shedding import SheddingHttpToolsProtocol  # noqa: E402


class _Transport:
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_the_protocol_answers_from_the_head_and_honours_connection_close() -> None:
    asked = []

    def refuse(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
               client: Callable[[], tuple[str, int] | None], version: str) -> tuple[bytes, bytes] | None:
        asked.append((method, target, dict(headers).get(b"x-id"), client(), version))
        return (b"content-length: 2\r\ncontent-type: application/json\r\n", b"{}") if target == b"/full" else None

    loop = asyncio.new_event_loop()
    try:
        state = ServerState()
        state.default_headers = [(b"date", b"Thu, 03 Dec 2026 06:00:00 GMT")]
        config = uvicorn.Config(app=None, http=SheddingHttpToolsProtocol, log_config=None)  # type: ignore[arg-type]
        protocol = SheddingHttpToolsProtocol(config, state, {STATE_KEY: refuse}, _loop=loop)
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"POST /full HTTP/1.1\r\nHost: t\r\nX-Id: 1\r\nContent-Length: 3\r\n\r\nab")
        assert transport.written == (b"HTTP/1.1 503 Service Unavailable\r\ndate: Thu, 03 Dec 2026 06:00:00 GMT\r\n"
                                     b"content-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
        assert not transport.closed and state.total_requests == 1
        protocol.data_received(b"c")  # the rest of the refused body, skipped
        transport.written = b""
        protocol.data_received(b"POST /full HTTP/1.1\r\nHost: t\r\nX-Id: 2\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        assert transport.written.endswith(b"connection: close\r\n\r\n{}") and transport.closed
        assert asked == [(b"POST", b"/full", b"1", ("127.0.0.1", 5555), "1.1"),
                         (b"POST", b"/full", b"2", ("127.0.0.1", 5555), "1.1")]
        protocol.connection_lost(None)
    finally:
        loop.close()


class _Buffered(_Transport):
    """A transport whose write buffer the test sets; `aborted` once the protocol drops the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered, self.aborted = 0, False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


def test_an_answer_whose_buffer_stops_shrinking_for_the_idle_limit_is_dropped() -> None:
    stalled: list[tuple[dict, object, int]] = []
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=None, http=SheddingHttpToolsProtocol, log_config=None)  # type: ignore[arg-type]
        watch = ConnectionWatch(0.05, 60.0, lambda state, client, unsent: stalled.append((state, client, unsent)),
                                lambda: (b"", b""), lambda *a: (b"", b""), lambda n: None, 65536, lambda: (b"", b""))
        protocol = SheddingHttpToolsProtocol(config, ServerState(), {WATCH_KEY: watch}, _loop=loop)
        transport = _Buffered()
        protocol.connection_made(transport)  # type: ignore[arg-type]

        transport.buffered = 900_000
        protocol.pause_writing()
        for left in (700_000, 400_000, 100_000):  # a slow reader: less left at every check
            transport.buffered = left
            loop.run_until_complete(asyncio.sleep(0.06))
        protocol.resume_writing()  # below the low-water mark: no more checks
        loop.run_until_complete(asyncio.sleep(0.15))
        assert not transport.aborted and not stalled

        transport.buffered = 500_000
        protocol.pause_writing()
        loop.run_until_complete(asyncio.sleep(0.02))
        transport.buffered = 450_000  # one step, then nothing
        loop.run_until_complete(asyncio.sleep(0.2))
        assert transport.aborted and stalled == [({}, ("127.0.0.1", 5555), 450_000)]
        protocol.connection_lost(None)
        loop.run_until_complete(asyncio.sleep(0.1))
        assert len(stalled) == 1
    finally:
        loop.close()


def test_bytes_that_are_not_http_get_the_watchs_answer_and_the_connection_closes() -> None:
    # uvicorn's internals the protocol's data_received calls as uvicorn's own does
    for name in ("_unset_keepalive_if_required", "_should_upgrade", "handle_websocket_upgrade",
                 "_unsupported_upgrade_warning"):
        assert callable(getattr(SheddingHttpToolsProtocol, name, None)), name
    told: list[tuple[object, str, str]] = []

    def not_http(client: tuple[str, int] | None, reason: str, opening: str) -> tuple[bytes, bytes]:
        told.append((client, reason, opening))
        return b"content-length: 2\r\ncontent-type: application/json\r\n", b"{}"

    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=None, http=SheddingHttpToolsProtocol, log_config=None)  # type: ignore[arg-type]
        watch = ConnectionWatch(10.0, 10.0, lambda *a: None, lambda: (b"", b""), not_http, lambda n: None, 65536,
                                lambda: (b"", b""))
        for first, opening, reason in ((b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tls", "Invalid method encountered"),
                                       (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2", "Pause on PRI/Upgrade"),
                                       (b"NOT HTTP\r\n\r\n", "", "Invalid method encountered")):
            protocol = SheddingHttpToolsProtocol(config, ServerState(), {WATCH_KEY: watch}, _loop=loop)
            transport = _Transport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(first)
            assert transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n"), transport.written
            assert transport.written.endswith(b"content-type: application/json\r\nconnection: close\r\n\r\n{}")
            assert transport.closed and told[-1] == (("127.0.0.1", 5555), reason, opening)
            protocol.connection_lost(None)
    finally:
        loop.close()
