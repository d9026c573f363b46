"""bench/load.py's raw HTTP/1.1 client against a loopback asyncio server that answers in awkward ways.

The benchmarks' numbers are only as good as their client: answers split across reads, Connection:
close, a keep-alive connection the server dropped while idle, no answer at all, Retry-After.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load  # noqa: E402

#: the real h2load's tests run where nghttp2-client is installed
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (nghttp2-client)")


async def _serve(handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _against(handler, use):
    """asyncio.run(use(url)) while `handler` serves connections on a loopback port."""
    async def main():
        server, url = await _serve(handler)
        async with server:
            return await use(url)

    return asyncio.run(main())


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def test_answers_split_across_reads_close_and_retry_after() -> None:
    connections = []
    bodies = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        n = 0
        while (request := await _read_request(reader)) is not None:
            bodies.append(request.split(b"\r\n\r\n", 1)[1])
            n += 1
            if n == 1:  # the head in two pieces, the body in three
                for piece in (b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 9\r\n\r\nabc", b"def", b"ghi"):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            elif n == 2:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return

    async def main() -> list:
        server, url = await _serve(handler)
        call = load.Call("/x", b"0123456789", {"content-type": "application/octet-stream"})
        async with server, load.RawHttp(url, 4, 5.0) as client:
            return [await client.send(call) for _ in range(4)]

    answers = asyncio.run(main())
    assert answers == [(200, None), (503, "1"), (200, None), (200, None)]
    assert len(connections) == 2  # kept alive for three, reconnected after Connection: close
    assert bodies == [b"0123456789"] * 4


def test_idle_connection_closed_by_the_server_is_retried_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await _read_request(reader) is not None:  # one answer, then close as if idle too long
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async def main() -> list:
        server, url = await _serve(handler)
        call = load.Call("/x", b"", {})
        async with server, load.RawHttp(url, 4, 5.0) as client:
            first = await client.send(call)
            await asyncio.sleep(0.2)  # the server has closed the idle connection meanwhile
            return [first, await client.send(call)]

    assert asyncio.run(main()) == [(200, None), (200, None)]


def test_no_answer_is_a_timeout_sample_and_the_loops_count_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)  # never answers within the client's timeout
        writer.close()

    run = _against(handler, lambda url: load.closed_loop(url, load.Call("/x", b"a", {}), 2, 0.2, timeout_s=0.3, raw=True))
    assert [s.status for s in run.samples] == [0, 0]
    assert run.errors == {"TimeoutError": 2}
    assert all(0.25 < s.latency_s < 2.0 for s in run.samples)  # the 0.3 s timeout, not the 5 s answer


def test_open_loop_against_a_keep_alive_server() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            await writer.drain()
        writer.close()

    run = _against(handler, lambda url: load.open_loop(url, load.Call("/x", b"abc", {}), 200.0, 1.0, seed=3, raw=True))
    summary = load.summarize(run)
    assert 120 < len(run.samples) < 300  # Poisson at 200/s for 1 s
    assert summary["errors"] == {} and all(s.status == 200 for s in run.samples)


def test_open_loop_times_out_silent_exchanges_and_drops_beyond_max_in_flight() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)  # never answers within the client's timeout
        writer.close()

    run = _against(handler, lambda url: load.open_loop(url, load.Call("/x", b"a", {}), 100.0, 0.5, seed=1,
                                                       max_in_flight=3, timeout_s=0.3, raw=True))
    assert len(run.samples) >= 3 and all(s.status == 0 for s in run.samples)
    assert run.errors == {"TimeoutError": len(run.samples)}
    assert all(0.3 <= s.latency_s < 2.0 for s in run.samples)  # timed out by the sweep, long before the 5 s answer
    assert run.client_dropped > 10  # ~50 arrivals, at most 3 outstanding at a time


def test_open_loop_retries_a_keep_alive_connection_the_server_closed() -> None:
    answered, dropped = [], []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await _read_request(reader) is not None:  # the first request is answered ...
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            answered.append(1)
            await writer.drain()
        if await _read_request(reader) is not None:  # ... the second is read and dropped, as at an idle timeout
            dropped.append(1)
        writer.close()

    run = _against(handler, lambda url: load.open_loop(url, load.Call("/x", b"", {}), [(20.0, 1.0)], seed=5, raw=True))
    assert len(run.samples) > 5 and [s.status for s in run.samples] == [200] * len(run.samples)
    assert run.errors == {} and len(answered) == len(run.samples)
    assert len(dropped) >= len(run.samples) // 2  # most requests met a dropped connection first, then were retried


def test_h2load_answers_go_on_the_open_loop_timeline_and_their_503s_are_not_header_checked() -> None:
    run = load.Run(samples=[load.Sample(0.5, 0.01, 503, "1"), load.Sample(1.5, 0.02, 200)], duration_s=4.0,
                   started_at=1000.0)
    rows = [(1001.25, 200, 0.1), (1001.0, 503, 0.002), (1003.5, 503, 0.004)]
    load.add_h2load(run, rows, {"errored": 1, "timeout": 1}, at_s=1.0)
    assert [round(s.t, 6) for s in run.samples] == [0.5, 1.0, 1.0, 1.0, 1.25, 1.5, 3.5]
    during = load.summarize(run, since_s=1.0, until_s=3.0)
    assert during["ok_rps"] == 1.0 and during["errors"] == {0: 2, 503: 1}
    assert during["rejected_checked"] == 0 and during["rejected_without_retry_after"] == 0
    whole = load.summarize(run)
    assert whole["rejected_checked"] == 1 and whole["rejected_without_retry_after"] == 0
    assert run.errors["h2load errored or timed out"] == 2


def test_h2load_summary_line_is_parsed() -> None:
    text = ("finished in 8.04s, 1745.88 req/s, 2.29MB/s\n"
            "requests: 13967 total, 14035 started, 13967 done, 1356 succeeded, 12611 failed, 0 errored, 3 timeout\n")
    assert load.H2LOAD_SUMMARY.search(text).groups() == ("13967", "14035", "13967", "1356", "12611", "0", "3")


@needs_h2load
def test_h2load_against_a_keep_alive_server() -> None:
    """The real h2load (where installed) sends the call at about the rate asked and logs every answer."""
    bodies = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await _read_request(reader)) is not None:
            bodies.append(request.split(b"\r\n\r\n", 1)[1])
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}")

    call = load.Call("/x", b"0123456789", {"content-type": "application/octet-stream"})
    t0 = __import__("time").time()
    rows, counts, cpu = _against(handler, lambda url: load.h2load(url, call, 200, 1.0, delay_s=0.2, clients=8))
    assert counts["errored"] == 0 and counts["timeout"] == 0 and counts["done"] == len(rows)
    assert 120 <= len(rows) <= 260 and set(b for b in bodies) == {b"0123456789"}
    assert all(status == 503 and 0 <= latency < 1 for _, status, latency in rows)
    assert min(start for start, _, _ in rows) >= t0 + 0.2 and cpu >= 0


@needs_h2load
def test_h2load_closed_loop_is_a_run() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")

    run = _against(handler, lambda url: load.h2load_closed_loop(url, load.Call("/x", b"abc", {}), 2, 0.5))
    summary = load.summarize(run)
    assert summary["errors"] == {} and 40 <= summary["n"] <= 110  # 2 connections x ~10 ms an answer
    assert 8 <= summary["p50_ms"] <= 60
