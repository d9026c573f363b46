"""`dermagan serve --workers 2` for real: two server processes on one port, one set of metrics.

Proves: both workers start and answer; `/metrics` (whichever worker answers it) counts every request
of both exactly once; admission control counts the requests in flight of both workers against one
limit, however unevenly the kernel hands out the connections; a worker killed with SIGKILL is replaced, its counters stay and its in-flight
gauge goes; SIGTERM to the supervisor drains the accepted requests of both workers, refuses new
work, exits, and removes the metrics folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import connected_clients, promtool_lint, serve, tcp_sockets, wait_inflight, wait_workers_ready
from sample_images import encode, gradient, mask_png, rect_mask

WORKERS = {"DERMAGAN_WORKERS": "2", "DERMAGAN_MODELS": "fixture-add,fixture-cycle-remove"}


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def _worker_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"Started server process \[(\d+)\]", log)]


def _wait_started(served, n: int, timeout_s: float = 60, listening: int | None = None) -> list[int]:
    wait_workers_ready(served, n, timeout_s=timeout_s, listening=listening)
    return _worker_pids(served.text())


def _sockets(pid: int) -> set[str]:
    """The sockets a process holds ("socket:[inode]"); an fd closed while they are listed is skipped."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # e.g. a readiness probe's connection, closed meanwhile
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def _metrics_dir(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))


def test_two_workers_one_port_metrics_add_up(models_dir: Path) -> None:
    image, mask = encode(gradient(96, 128)), mask_png(rect_mask(96, 128, (20, 30, 60, 90)))
    with serve(models_dir, **WORKERS) as s:
        pids = _wait_started(s, 2)
        assert len(set(pids)) == 2 and s.proc.pid not in pids, s.text()

        def add(i: int) -> int:  # a new connection each: the kernel spreads them over the two workers
            r = httpx.post(s.url + "/eczema/add", files={"image": ("i", image), "mask": ("m", mask)},
                           headers={"X-Request-ID": f"req-{i}"}, timeout=30)
            assert r.headers["x-request-id"] == f"req-{i}"
            return r.status_code

        with cf.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(add, range(24)))
        assert codes == [200] * 24
        # one access line a request, from whichever worker served it (uvicorn's own access log is off); a line
        # is written once its answer is sent, so the last may follow the client's last answer by a moment
        t0 = time.monotonic()
        while (log := s.text()).count("dermagan.access: ") < 24:
            assert time.monotonic() - t0 < 10, log
            time.sleep(0.05)
        for i in range(24):
            line = (rf'dermagan\.access: 127\.0\.0\.1:\d+ "POST /eczema/add HTTP/1\.1" 200 [0-9.]+ ms '
                    rf"model=fixture-add request_id=req-{i}\n")
            assert len(re.findall(line, log)) == 1, log
        assert "uvicorn.access" not in log
        text = httpx.get(s.url + "/metrics").text
        assert _sample(text, "dermagan_requests_total", code="200", endpoint="/eczema/add", model="fixture-add") == 24
        assert _sample(text, "dermagan_batch_size_sum", model="fixture-add") == 24  # every row, once
        assert _sample(text, "dermagan_inflight_requests") == 0
        assert _sample(text, "dermagan_model_info", model="fixture-add", provider="CPUExecutionProvider",
                       version="0-fixture") == 1  # one line per model, not one per worker
        assert "pid=" not in text
        assert promtool_lint(text) in ("", None)  # Prometheus's linter, where installed
        t0 = time.monotonic()  # each worker freezes its start-up objects once warm (DERMAGAN_GC_FREEZE)
        while s.text().count("start-up objects frozen") < 2:
            assert time.monotonic() - t0 < 30, s.text()
            time.sleep(0.1)

        # a worker that dies is replaced; what it counted stays counted, its gauges go
        os.kill(pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        while len(_worker_pids(s.text())) < 3:
            assert time.monotonic() - t0 < 60, s.text()
            time.sleep(0.1)
        _wait_started(s, 3, listening=2)  # the dead worker's socket went with it
        assert [add(i) for i in range(4)] == [200] * 4
        text = httpx.get(s.url + "/metrics").text
        assert _sample(text, "dermagan_requests_total", code="200", endpoint="/eczema/add", model="fixture-add") == 28
        assert _sample(text, "dermagan_inflight_requests") == 0


def test_workers_drain_and_exit_when_the_supervisor_is_killed(models_dir: Path) -> None:
    """SIGKILL to the supervisor: the kernel sends each worker SIGTERM (PR_SET_PDEATHSIG); a request in
    flight is still answered, then the workers exit and the port is free for a new server."""
    image = encode(gradient(3000, 4000))  # ~2 s a request: in flight when the supervisor dies
    with serve(models_dir, **WORKERS, DERMAGAN_DRAIN_TIMEOUT_S="20") as s:
        pids = _wait_started(s, 2)
        port = int(s.url.rsplit(":", 1)[1])
        with httpx.Client(base_url=s.url, timeout=60) as c, cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/eczema/remove", files={"image": ("i", image)})
            t0 = time.monotonic()
            while _sample(httpx.get(s.url + "/metrics").text, "dermagan_inflight_requests") < 1:
                assert time.monotonic() - t0 < 30, s.text()
                time.sleep(0.02)
            s.proc.kill()
            s.proc.wait(10)
            assert pending.result().status_code == 200
        t0 = time.monotonic()
        while any(Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
                  for pid in pids):
            assert time.monotonic() - t0 < 30, f"workers {pids} still running: {s.text()}"
            time.sleep(0.1)
        with socket.socket() as again:  # nothing listens there any more
            assert again.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_drains_every_worker(models_dir: Path) -> None:
    drain_s = 20.0
    image = encode(gradient(3000, 4000))  # 12 MP: ~2 s a request on the 2-core box, so it outlasts the supervisor's 0.5 s poll
    with serve(models_dir, **WORKERS, DERMAGAN_DRAIN_TIMEOUT_S=str(drain_s)) as s:
        pids = _wait_started(s, 2)
        folder = _metrics_dir(pids[0])  # set by the supervisor for its workers
        assert os.path.isdir(folder)

        def call(c: httpx.Client) -> tuple[int, float]:
            r = c.post("/eczema/remove", files={"image": ("i", image)})
            return r.status_code, time.monotonic()

        with connected_clients(s.url, 4) as clients, cf.ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(call, c) for c in clients]
            wait_inflight(s.url, 4)
            signalled = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            while s.text().count("draining: no new connections") < 2:  # forwarded within the supervisor's 0.5 s poll
                assert time.monotonic() - signalled < 5, s.text()
                time.sleep(0.02)
            drained = time.monotonic()
            for _ in range(3):  # new work during the drain: refused, politely or by a closed port
                try:
                    r = httpx.post(s.url + "/eczema/remove", files={"image": ("i", image)}, timeout=5)
                    assert r.status_code == 503, r.text
                except httpx.TransportError:
                    pass
            results = [c.result() for c in calls]
        assert [code for code, _ in results] == [200] * 4, results
        assert max(done for _, done in results) > drained, "the accepted requests were not in flight during the drain"
        assert s.proc.wait(timeout=drain_s + 10) == 0, s.text()
        assert time.monotonic() - signalled < drain_s + 5
        assert not os.path.exists(folder), "the metrics folder outlived the server"


def _worker_of(client: socket.socket, port: int, pids: list[int], timeout_s: float = 10) -> int:
    """The worker process that accepted this client connection (matched through /proc/net/tcp and the
    workers' file descriptors)."""
    mine = client.getsockname()[1]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        inodes = {inode for local, remote, _, inode in tcp_sockets() if local == port and remote == mine}
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:
                    pass
        time.sleep(0.02)
    raise AssertionError(f"no worker holds the connection from port {mine}")


def test_the_workers_admit_against_one_shared_limit(models_dir: Path) -> None:
    """DERMAGAN_MAX_INFLIGHT=4 over 2 workers: three slow requests on the same worker and one on the
    other are all admitted (a per-worker share of 2 would refuse the third), the fifth request is refused.
    Slow in their work, not their upload: a place is taken once a body is in (slow uploads hold upload
    places, tests/e2e/test_resilience.py)."""
    image, mask = encode(gradient(96, 128)), mask_png(rect_mask(96, 128, (20, 30, 60, 90)))
    # ~2 s of tiles each at its own size (as the drain tests'), so all four are in flight at once
    slow = httpx.Request("POST", "http://x/eczema/remove", files={"image": ("i", encode(gradient(1200, 1800)))},
                         data={"work_px": "1200"})
    body = slow.read()
    head = (f"POST /eczema/remove HTTP/1.1\r\nHost: x\r\nContent-Type: {slow.headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with serve(models_dir, **WORKERS, DERMAGAN_MAX_INFLIGHT="4") as s:
        pids = _wait_started(s, 2)
        port = int(s.url.rsplit(":", 1)[1])
        held: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
        spare: list[socket.socket] = []
        try:
            while len(held[pids[0]]) < 3 or len(held[pids[1]]) < 1:  # 3 on one worker, 1 on the other
                c = socket.create_connection(("127.0.0.1", port), timeout=30)
                pid = _worker_of(c, port, pids)
                (held[pid] if len(held[pid]) < (3 if pid == pids[0] else 1) else spare).append(c)
                assert len(spare) < 200, "the kernel never gave the first worker 3 connections"
            for c in held[pids[0]] + held[pids[1]]:
                c.sendall(head + body)
            wait_inflight(s.url, 4)
            refused = httpx.post(s.url + "/eczema/add", files={"image": ("i", image), "mask": ("m", mask)}, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert "already has 4 requests in progress" in refused.json()["detail"]
            codes = []
            for c in held[pids[0]] + held[pids[1]]:
                reply = b""
                while b"\r\n" not in reply:
                    reply += c.recv(4096)
                codes.append(int(reply.split()[1]))
            assert codes == [200] * 4
        finally:
            for c in [*spare, *held[pids[0]], *held[pids[1]]]:
                c.close()
        t0 = time.monotonic()
        while _sample(httpx.get(s.url + "/metrics").text, "dermagan_inflight_requests") > 0:
            assert time.monotonic() - t0 < 10
            time.sleep(0.05)
        ok = httpx.post(s.url + "/eczema/add", files={"image": ("i", image), "mask": ("m", mask)}, timeout=10)
        assert ok.status_code == 200, ok.text


def test_the_workers_get_a_socket_each_and_the_connections_spread(models_dir: Path) -> None:
    """Each worker listens on its own SO_REUSEPORT socket: 64 connections opened at once land on both
    (one shared socket gave 64/0 or 63/1 in some tries), and a port another server holds is refused."""
    with serve(models_dir, **WORKERS) as s:
        pids = _wait_started(s, 2)
        port = int(s.url.rsplit(":", 1)[1])
        listening = {pid: _sockets(pid) for pid in pids}
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
        try:
            owners = [_worker_of(c, port, pids) for c in conns]
        finally:
            for c in conns:
                c.close()
        assert min(owners.count(pid) for pid in pids) >= 16, owners  # binomial(64, 1/2): below 16 is p < 1e-4
        assert listening[pids[0]].isdisjoint(listening[pids[1]])  # no socket shared between the workers

        env = {**os.environ, "DERMAGAN_WORKERS": "2", "DERMAGAN_HOST": "127.0.0.1", "DERMAGAN_PORT": str(port),
               "DERMAGAN_MODELS_DIR": str(models_dir), "DERMAGAN_MODELS": "fixture-add"}
        taken = subprocess.run([sys.executable, "-m", "dermagan.cli", "serve"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert taken.returncode == 2, taken.stderr
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in taken.stderr


def test_json_logs_every_line_of_the_supervisor_and_the_workers(models_dir: Path) -> None:
    """DERMAGAN_LOG_FORMAT=json: every line on stderr, uvicorn's included, from start to a drained exit, is
    one JSON object a log collector reads; access lines carry their fields, and never the request's data."""
    image, mask = encode(gradient(96, 128)), mask_png(rect_mask(96, 128, (20, 30, 50, 70)))
    with serve(models_dir, **WORKERS, DERMAGAN_LOG_FORMAT="json") as s:
        _wait_started(s, 2)
        with httpx.Client(base_url=s.url) as c:
            r = c.post("/eczema/add?note=private", files={"image": ("i", image), "mask": ("m", mask)},
                       headers={"X-Request-ID": "json-logs-1", "X-API-Key": "not-for-logs"})
            assert r.status_code == 200
            assert c.get("/no/such/page").status_code == 404
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0, s.text()
        text = s.text()
    records = [json.loads(line) for line in text.splitlines()]  # every line, or this raises
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", r["time"]) for r in records)
    assert len({r["pid"] for r in records}) >= 3  # the supervisor and both workers
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "dermagan.service", "dermagan.access"} <= loggers
    assert any("Started server process" in r["message"] for r in records)  # uvicorn's own lines, as JSON
    assert any(r["message"].startswith("draining") for r in records)
    access = [r for r in records if r["logger"] == "dermagan.access"]
    edit = next(r for r in access if r.get("request_id") == "json-logs-1")
    assert {k: edit[k] for k in ("method", "path", "status", "model")} == {
        "method": "POST", "path": "/eczema/add", "status": 200, "model": "fixture-add"}
    assert isinstance(edit["duration_ms"], float) and edit["client"].startswith("127.0.0.1:")
    missing = next(r for r in access if r.get("path") == "/no/such/page")
    assert missing["status"] == 404 and missing["model"] is None
    assert "\x1b" not in text and "color_message" not in text  # no terminal colour codes
    assert "private" not in text and "not-for-logs" not in text  # no query string, no header value
