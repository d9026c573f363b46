"""Early refusal (service/shedding.py): while the service is full, the HTTP protocol itself answers
503 `queue_full` -- the same answer the ASGI Gate gives, byte for byte but the date -- and the
connection stays usable; every request the Gate would answer otherwise still reaches it.

Raw sockets on loopback, so the bytes on the wire are what is checked. The service is made full by
one request whose body never finishes (max_uploads 1): it holds the one upload place. (A full set of
in-flight places takes the same path: `Gate._refusal`; tests/e2e/test_docs_pages.py fills one that way.)
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dermagan.service import app as app_module

from conftest import LiveServer, live_server, settings_for

pytest.importorskip("httptools")  # early refusal is the httptools protocol's; on h11 nothing changes

TARGET = "/eczema/segment"


class Wire:
    """One raw keep-alive connection; answers are read from a buffered file, so bytes of the next
    answer that arrive with this one are kept for it."""

    def __init__(self, server: LiveServer) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        status = self.file.readline()
        assert status, "connection closed before an answer"
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.lower()] = value.strip()
        return int(status.split()[1]), headers, self.file.read(int(headers.get("content-length", 0)))

    def closed(self) -> bool:
        return self.file.read(1) == b""

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()


def _post_head(path: str, length: int, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/octet-stream",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _get(wire: Wire, path: str, key: str = "") -> tuple[int, dict[str, str], bytes]:
    wire.send(f"GET {path} HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\n\r\n".encode())
    return wire.answer()


@contextmanager
def _full(server: LiveServer, key: str = "") -> Iterator[None]:
    """The service's one upload place (max_uploads 1) taken by a request whose body is still on its way."""
    hold = Wire(server)
    hold.send(_post_head(TARGET, 1000, f"X-API-Key: {key}") + b"x" * 10)
    t0 = time.monotonic()
    with Wire(server) as probe:
        while b"dermagan_uploading_requests 1.0" not in _get(probe, "/metrics", key)[2]:
            assert time.monotonic() - t0 < 5, "the held request's upload was not started"
            time.sleep(0.01)
    try:
        yield
    finally:
        hold.__exit__()
        with Wire(server) as probe:  # the place is free again (the server saw the held request go)
            while b"dermagan_uploading_requests 0.0" not in _get(probe, "/metrics", key)[2]:
                assert time.monotonic() - t0 < 10, "the held request was not let go"
                time.sleep(0.01)


@pytest.fixture
def asgi_refusals(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the 503 `queue_full` answers the ASGI Gate sends (the early path never calls it)."""
    calls: list[int] = []
    original = app_module.Prebuilt.__call__

    async def counted(self, *args):  # type: ignore[no-untyped-def]
        calls.append(1)
        await original(self, *args)

    monkeypatch.setattr(app_module.Prebuilt, "__call__", counted)
    return calls


def _refusal(server: LiveServer, *extra: str) -> tuple[int, dict[str, str], bytes]:
    with _full(server), Wire(server) as wire:
        wire.send(_post_head(TARGET, 5, *extra) + b"abcde")
        answer = wire.answer()
        assert _get(wire, "/healthz")[0] == 200  # the same connection serves the next request
        return answer


@pytest.mark.parametrize("root", ["", "/ml/dermagan"])  # also behind a proxy that strips DERMAGAN_ROOT_PATH
def test_the_early_answer_is_the_gates_answer(models_dir: Path, asgi_refusals: list[int],
                                             caplog: pytest.LogCaptureFixture, root: str) -> None:
    caplog.set_level("INFO", logger="dermagan.access")
    answers, lines, generated = {}, {}, {}
    for early in (True, False):
        settings = settings_for(models_dir, models=("fixture-segment",), max_uploads=1, upload_idle_s=60, retry_after_s=3,
                                early_refusal=early, root_path=root)
        with live_server(settings) as server:
            before = len(asgi_refusals)
            caplog.clear()
            # through a proxy uvicorn trusts (FORWARDED_ALLOW_IPS: loopback by default), which names the client
            answers[early] = _refusal(server, "X-Request-ID: lb-7f3a/1", "X-Forwarded-For: 203.0.113.7")
            assert len(asgi_refusals) - before == (0 if early else 1)  # who answered
            lines[early] = [r.getMessage() for r in caplog.records
                            if r.name == "dermagan.access" and "lb-7f3a/1" in r.getMessage()]
            generated[early] = _refusal(server, 'X-Request-ID: has "quotes"')[1]["x-request-id"]
    (status, headers, body), (status_asgi, headers_asgi, body_asgi) = answers[True], answers[False]
    assert status == status_asgi == 503
    headers.pop("date"), headers_asgi.pop("date")
    assert headers == headers_asgi and body == body_asgi
    assert headers["retry-after"] == "3" and json.loads(body)["error"] == "queue_full"
    assert headers["x-request-id"] == json.loads(body)["request_id"] == "lb-7f3a/1"  # echoed by both paths
    assert headers["x-content-type-options"] == "nosniff"
    # and logged alike: client, request line, status, time (the early one 0.0 ms), model, ID
    for early in (True, False):
        (line,) = lines[early]
        assert re.fullmatch(r'203\.0\.113\.7:0 "POST /eczema/segment HTTP/1\.1" 503 \d+\.\d ms model=- '
                            r'request_id=lb-7f3a/1', line), line
        # an ID that is not safe to echo or log is replaced by a new random one
        assert re.fullmatch("[0-9a-f]{32}", generated[early])


def test_refused_bodies_are_skipped_and_the_connection_kept(models_dir: Path, asgi_refusals: list[int]) -> None:
    settings = settings_for(models_dir, models=("fixture-segment",), max_uploads=1, upload_idle_s=60, api_key="k3y", max_body_bytes=10_000)
    with live_server(settings) as server, _full(server, "k3y"):
        with Wire(server) as wire:
            # answered from the head alone; the body, sent afterwards in pieces, is read past
            wire.send(_post_head(TARGET, 3000, "X-API-Key: k3y"))
            assert wire.answer()[0] == 503
            for _ in range(3):
                wire.send(b"\x00" * 1000)
                time.sleep(0.01)
            # then two pipelined requests in one write: a refusal and a health check
            wire.send(_post_head(TARGET, 4, "X-API-Key: k3y") + b"abcd" + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wire.answer()[0] == 503
            assert wire.answer()[0] == 200
            assert asgi_refusals == []
            # what the Gate decides on other grounds still reaches it, full or not
            wire.send(_post_head(TARGET, 4, "X-API-Key: wrong") + b"abcd")
            assert wire.answer()[0] == 401
            wire.send(_post_head(TARGET, 20_000, "X-API-Key: k3y"))
            assert wire.answer()[0] == 413
        with Wire(server) as wire:  # (413 may close the connection: a fresh one)
            wire.send(_post_head(TARGET + "?x=1", 4, "X-API-Key: k3y") + b"abcd")
            assert wire.answer()[0] == 503 and len(asgi_refusals) == 1  # not the exact path: the Gate's
            wire.send(_post_head(TARGET, 4, "X-API-Key: k3y", "Connection: close") + b"abcd")
            status, headers, _ = wire.answer()
            assert status == 503 and headers["connection"] == "close"
            assert wire.closed()  # closed after the answer
        with Wire(server) as wire:
            metrics = _get(wire, "/metrics", "k3y")[2].decode()
    # every refusal counted as the Gate counts it: 3 early (one with Connection: close), 1 by the Gate
    assert 'dermagan_request_failures_total{model="",reason="queue_full"} 4.0' in metrics
    assert f'dermagan_requests_total{{code="503",endpoint="{TARGET}",model=""}} 4.0' in metrics



def test_refusals_fold_into_one_line_a_second() -> None:
    """FoldedRefusals on a clock of its own: the first refusal of a window is written in full, the others
    of the window counted and written once, when the next window begins or on flush (no loop: no timer)."""
    now, written = [0.0], []
    lines = app_module.FoldedRefusals(1.0, lambda count, seconds: written.append((count, seconds)), clock=lambda: now[0])
    assert lines.first()  # the first: its own line
    for t in (0.1, 0.5, 0.99):
        now[0] = t
        assert not lines.first()
    assert written == [] and lines.folded == 3
    now[0] = 1.25  # the next window: the count of the last one first, then this refusal's own line
    assert lines.first()
    assert written == [(3, 1.25)] and lines.folded == 0
    lines.flush()  # nothing folded since: nothing written
    assert written == [(3, 1.25)]
    now[0] = 1.5  # flush ended the window: the next refusal is written in full again
    assert lines.first()
    now[0] = 1.6
    assert not lines.first()
    lines.flush()  # e.g. at shutdown
    assert written == [(3, 1.25), (1, pytest.approx(0.1))]


@pytest.mark.parametrize("mode", ["summary", "each"])
def test_an_overload_logs_a_line_a_second_not_a_line_a_refusal(models_dir: Path, caplog: pytest.LogCaptureFixture,
                                                              mode: str) -> None:
    """DERMAGAN_ACCESS_LOG_REFUSALS: 25 refusals on two connections within a second (early and through the Gate, a
    query string taking the Gate's path) are one full access line and, at the second's end, one line counting the
    other 24 (JSON: a `refused` field); with `each`, 25 lines. The metrics count every refusal either way."""
    caplog.set_level("INFO", logger="dermagan.access")
    settings = settings_for(models_dir, models=("fixture-segment",), max_uploads=1, upload_idle_s=60,
                            access_log_refusals=mode, log_format="json")
    with live_server(settings) as server, _full(server):
        caplog.clear()
        t0 = time.monotonic()
        with Wire(server) as early, Wire(server) as gate:
            for i in range(25):
                wire, target = (gate, TARGET + "?x=1") if i % 5 == 4 else (early, TARGET)
                wire.send(_post_head(target, 4, f"X-Request-ID: r{i}") + b"abcd")
                assert wire.answer()[0] == 503
            assert time.monotonic() - t0 < 0.9, "too slow to land in one second"
            time.sleep(1.3)  # the second's end: its count is written by the loop's timer
            metrics = _get(early, "/metrics")[2].decode()
    records = [r for r in caplog.records if r.name == "dermagan.access"]
    own = [r for r in records if " 503 " in r.getMessage() and "request_id=r" in r.getMessage()]
    folded = [r for r in records if "more requests refused" in r.getMessage()]
    if mode == "each":
        assert len(own) == 25 and folded == []
    else:
        assert [r.getMessage().rsplit("request_id=", 1)[1] for r in own] == ["r0"]
        (line,) = folded
        assert re.fullmatch(r"24 more requests refused \(503 queue_full\) in the last \d\.\d s, not logged one by one "
                            r"\(DERMAGAN_ACCESS_LOG_REFUSALS=each logs each\)", line.getMessage()), line.getMessage()
        assert line.refused == 24 and line.status == 503  # type: ignore[attr-defined]  # JSON's fields
    assert 'dermagan_request_failures_total{model="",reason="queue_full"} 25.0' in metrics


def test_refusals_folded_when_the_server_stops_are_still_logged(models_dir: Path, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The count of a window that has not ended when the service shuts down is written at shutdown, not lost
    (a window of a minute here, so that only the shutdown can write it)."""
    caplog.set_level("INFO", logger="dermagan.access")
    monkeypatch.setattr(app_module, "REFUSALS_LOG_EVERY_S", 60.0)
    settings = settings_for(models_dir, models=("fixture-segment",), max_uploads=1, upload_idle_s=60)
    with live_server(settings) as server:
        with _full(server), Wire(server) as wire:
            caplog.clear()
            for i in range(4):
                wire.send(_post_head(TARGET, 4, f"X-Request-ID: s{i}") + b"abcd")
                assert wire.answer()[0] == 503
            folded = [r for r in caplog.records if "more requests refused" in r.getMessage()]
            assert folded == []  # (the window has not ended)
    messages = [r.getMessage() for r in caplog.records if r.name == "dermagan.access"]
    assert sum("request_id=s" in m for m in messages) == 1
    assert sum(m.startswith("3 more requests refused (503 queue_full) in the last ") for m in messages) == 1, messages
