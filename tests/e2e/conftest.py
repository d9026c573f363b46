"""A real uvicorn server on loopback (free port) serving the fixture ONNX models, and an httpx client.

`live_server(settings)` runs the app in a thread of this process, so a test may patch the engine
(a slow model, a held warm-up) and still talk to it over real HTTP. `serve(models_dir, **env)` runs
`dermagan serve` itself as a subprocess (signals, exit codes, RSS, worker processes).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from fixture_models import build_models  # noqa: E402

from dermagan.service.app import create_app  # noqa: E402
from dermagan.service.cli import http_protocol  # noqa: E402
from dermagan.service.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_models(folder)
    return folder


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        # the HTTP protocol `dermagan serve` runs (with early refusal where httptools is installed)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                root_path=settings.root_path,
                                timeout_graceful_shutdown=5, http=http_protocol(), access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def start(self, *, wait_ready: bool = True, timeout_s: float = 30) -> "LiveServer":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError("server start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if wait_ready:
            while httpx.get(self.url + "/readyz").status_code != 200:
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError("server readiness")
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@contextmanager
def live_server(settings: Settings, *, wait_ready: bool = True) -> Iterator[LiveServer]:
    server = LiveServer(settings).start(wait_ready=wait_ready)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def connected_clients(url: str, n: int) -> Iterator[list[httpx.Client]]:
    """n keep-alive clients, each already connected (one GET /healthz): a request they send later is
    an accepted one even if the server stops accepting connections meanwhile. Closed on exit."""
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(n)]
    try:
        for c in clients:
            c.get("/healthz")
        yield clients
    finally:
        for c in clients:
            c.close()


def settings_for(models_dir: Path, **kw: Any) -> Settings:
    # gc_freeze off: these servers run inside pytest's process, whose objects must stay collectable
    return Settings.from_env({}, **{"models_dir": models_dir, "providers": ("CPUExecutionProvider",),
                                    "intra_op_threads": 1, "gc_freeze": False, **kw})


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[LiveServer]:
    with live_server(settings_for(models_dir, max_delay_ms=20)) as s:
        yield s


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# ---- `dermagan serve` as a subprocess ----------------------------------------------------------

BASE_ENV = {"DERMAGAN_HOST": "127.0.0.1", "DERMAGAN_PORT": "0", "DERMAGAN_PROVIDERS": "CPUExecutionProvider",
            "DERMAGAN_INTRA_OP_THREADS": "1", "DERMAGAN_LOG_LEVEL": "info"}


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(models_dir: Path, env: dict[str, str], log: Path, open_files: int | None = None) -> subprocess.Popen[bytes]:
    """`open_files`: the server starts with that soft limit on open files (its hard limit unchanged)."""
    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    out = open(log, "wb")  # a file, not a pipe: a full pipe would stall the server
    try:
        return subprocess.Popen([sys.executable, "-m", "dermagan.cli", "serve", "--models-dir", str(models_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **BASE_ENV, **env},
                                preexec_fn=limit if open_files is not None else None)
    finally:
        out.close()


@contextmanager
def serve(models_dir: Path, open_files: int | None = None, **env: str) -> Iterator[Served]:
    """`dermagan serve` on a free loopback port, ready; killed on exit if still running. `open_files`: its
    soft limit on open files at start."""
    log = Path(tempfile.mkstemp(prefix="dermagan-serve-", suffix=".log")[1])
    with socket.socket() as probe:  # a free port (any log level: no need to parse uvicorn's banner)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"{'https' if env.get('DERMAGAN_TLS_CERTFILE') else 'http'}://127.0.0.1:{port}"
    proc = _start(models_dir, {**env, "DERMAGAN_PORT": str(port)}, log, open_files)
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 60, "not ready in 60 s"
            try:
                if httpx.get(url + "/readyz", timeout=5, verify=False).status_code == 200:  # (tests verify TLS)
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        served = Served(proc, log, url)
        wait_workers_ready(served, int(env.get("DERMAGAN_WORKERS", "1")), env.get("DERMAGAN_LOG_LEVEL", "info"))
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.unlink(missing_ok=True)


def tcp_sockets() -> Iterator[tuple[int, int, str, str]]:
    """This machine's TCP sockets, IPv4 and IPv6, from /proc/net: (local port, remote port, state -- "0A" is
    LISTEN --, "socket:[inode]" as a process's file descriptor links to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            yield int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], f"socket:[{f[9]}]"


def listening_sockets(port: int) -> int:
    """How many sockets on this machine listen on TCP `port`."""
    return sum(local == port and state == "0A" for local, _, state, _ in tcp_sockets())


def wait_workers_ready(served: Served, workers: int, level: str = "info", timeout_s: float = 90,
                       listening: int | None = None) -> None:
    """Until `workers` worker processes have become ready, counted over the whole log (a replaced worker's
    successor counts too), and `listening` sockets (default: `workers`) listen on the port. The first 200
    from /readyz comes from one worker; a loaded box may still be warming the others. Each logs "ready: K
    models" at log level info; without those lines, eight answers in a row (new connections, spread over
    the workers) must be 200."""
    if workers <= 1:
        return
    port, listening = int(served.url.rsplit(":", 1)[1]), workers if listening is None else listening
    t0 = time.monotonic()
    while True:
        assert served.proc.poll() is None, served.text()
        assert time.monotonic() - t0 < timeout_s, f"not {workers} workers ready in {timeout_s} s: {served.text()[-3000:]}"
        # a worker logs "ready" in its lifespan and uvicorn listens after it (a CI run once sent 64/0 in between)
        if listening_sockets(port) >= listening:
            if level.lower() in ("info", "debug"):
                if len(re.findall(r"ready: \d+ models", served.text())) >= workers:
                    return
            elif all(httpx.get(served.url + "/readyz", timeout=5, verify=False).status_code == 200 for _ in range(8)):
                return
        time.sleep(0.05)


def slow_run(server, model: str, seconds: float) -> threading.Event:
    """Make one model's inference take `seconds` (the batcher calls engine.run in its thread). The
    event is set when a batch starts: wait for it rather than sleep, so a stalled box keeps the order."""
    engine = server.runtime.engines[model]
    original = engine.run
    started = threading.Event()

    def run(feeds):
        started.set()
        time.sleep(seconds)
        return original(feeds)

    server.runtime.batchers[model]._run = run
    return started


def gauge(url: str, name: str) -> float:
    """A metric's value from GET /metrics, summed over its label sets (and the workers)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    assert values, f"no metric {name}"
    return sum(values)


def wait_inflight(url: str, n: int, timeout_s: float = 20) -> None:
    """Until the service counts `n` requests in flight (admitted, not yet answered): a signal sent then
    finds them accepted, however slowly a loaded box sent them."""
    t0 = time.monotonic()
    while gauge(url, "dermagan_inflight_requests") < n:
        assert time.monotonic() - t0 < timeout_s, f"fewer than {n} requests in flight after {timeout_s} s"
        time.sleep(0.02)


PROMTOOL_MISSING = "promtool not installed (Debian: apt-get install --no-install-recommends prometheus; .ci/run does)"


def promtool() -> str | None:
    """Prometheus's promtool, where installed."""
    return shutil.which("promtool")


def promtool_lint(exposition: str) -> str | None:
    """`promtool check metrics` (Prometheus's own linter: names, units, HELP, TYPE) over an exposition:
    its complaints ("" when none), or None where promtool is not installed."""
    exe = promtool()
    if exe is None:
        return None
    run = subprocess.run([exe, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr + ("" if run.returncode == 0 else f"(exit {run.returncode})")
