"""`dermagan serve`: serve the models of a folder over HTTP (uvicorn).

Defaults: the repository's `models/` (or DERMAGAN_MODELS_DIR), host 0.0.0.0 (the service runs in
containers, where loopback is unreachable from outside; pass --host 127.0.0.1 on a shared machine),
port 8000, one process. Every other knob is a DERMAGAN_* environment variable (see settings.py).

`--workers N` (DERMAGAN_WORKERS) runs N server processes on one port under uvicorn's process
supervisor (which restarts a worker that dies: logged at ERROR with its cause, counted in
dermagan_worker_restarts_total, ever later when it keeps dying), each listening on its own SO_REUSEPORT
socket (WorkerSocket), once its models are warm, so the kernel spreads the connections evenly over warm
workers. SIGHUP makes every worker reload its models in place; SIGTTIN / SIGTTOU change nothing. Each worker loads every model and has its own
batchers, and gets CPU cores / N ORT and codec threads unless those are set. `/metrics` reports the sum
over the workers (prometheus_client's multiprocess mode, see metrics.py), and admission control counts
the requests in flight of all workers together (admission.py). On SIGTERM the supervisor
passes the signal on and every worker drains as a single process does. A worker whose supervisor
dies without that (SIGKILL, a crash) gets SIGTERM from the kernel and drains and exits the same way
(Linux PR_SET_PDEATHSIG): orphans would keep the port and serve on, unsupervised.

Exit status: 0 after a clean shutdown, 2 when the models cannot be served (the message names the file).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.config
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dermagan.service.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Every other setting is a DERMAGAN_* environment variable -- among them DERMAGAN_API_KEY "
                     "(one or several keys), DERMAGAN_TLS_CERTFILE / DERMAGAN_TLS_KEYFILE (HTTPS), DERMAGAN_LOG_FORMAT "
                     "(text | json), DERMAGAN_ROOT_PATH (behind a path-prefix proxy), DERMAGAN_MAX_BATCH, "
                     "DERMAGAN_MAX_INFLIGHT: `dermagan serve --settings` lists them all. Once running, the API's "
                     "documentation is at http://HOST:PORT/docs.")
    parser.add_argument("--settings", action="store_true",
                        help="list every DERMAGAN_* setting with its default and meaning, and exit")
    parser.add_argument("--models-dir", help="folder with manifest.json and the ONNX files "
                        "(default: DERMAGAN_MODELS_DIR, else the repository's models/)")
    parser.add_argument("--host", help="address to listen on (default: DERMAGAN_HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: DERMAGAN_PORT, else 8000)")
    parser.add_argument("--workers", type=int, help="server processes on the one port (default: DERMAGAN_WORKERS, "
                        "else 1); on CPU, about one per 1-2 cores; on a GPU, one process per GPU is the rule")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"],
                        help="default: DERMAGAN_LOG_LEVEL, else info")
    parser.add_argument("--check", action="store_true",
                        help="do what start-up does -- verify the manifest and every file's sha256, open every model "
                             "on the providers, run every batch size once -- print what would serve, and exit "
                             "(0: it would start; 2: it would refuse, and why): for a deployment pipeline")


def worker_app() -> "FastAPI":
    """The app of one worker process (uvicorn's factory): settings from the DERMAGAN_* environment
    that the parent process completed."""
    from dermagan.service.app import create_app
    from dermagan.service.settings import Settings

    hold_early_sighup()  # first: a SIGHUP forwarded while this worker loads must not kill it
    settings = Settings.from_env()
    _configure_logging(settings)
    exit_with_supervisor()
    return create_app(settings)


#: time.monotonic() of the last SIGHUP that hold_early_sighup's handler recorded, until the lifespan takes it
_early_sighup: list[float] = []


def hold_early_sighup() -> None:
    """From the first line of `dermagan serve` and of each worker: a SIGHUP only records that a reload was asked
    for, until the lifespan takes the signal over (app.reload_on_sighup), which then asks the runtime for that
    reload (runtime.request_reload: run once the models are warm, unless they were read after the signal).
    SIGHUP's default action ends the process (exit 129): a reload sent to a server or a worker that was still
    loading its models killed it. A worker starts with SIGHUP blocked (its supervisor spawns it so: _hup_held),
    so a signal sent before this line waits in the kernel; it is unblocked here, after the handler is set.
    Main thread only (a no-op elsewhere)."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return

    def record(signum: int, frame: Any) -> None:  # (no logging in a signal handler: it is logged when taken)
        _early_sighup[:] = [time.monotonic()]

    signal.signal(signal.SIGHUP, record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def take_early_sighup() -> float | None:
    """When hold_early_sighup's handler last recorded a SIGHUP (time.monotonic()), once; None when it did not."""
    return _early_sighup.pop() if _early_sighup else None


@contextlib.contextmanager
def _hup_held() -> Iterator[None]:
    """SIGHUP blocked in this thread for the block: a worker spawned here inherits the mask, so a SIGHUP sent
    to it before its first line of our code waits instead of killing it (hold_early_sighup unblocks it)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


SUPERVISOR_ENV = "DERMAGAN_SUPERVISOR_PID"  # set by `dermagan serve --workers N` for its workers


def exit_with_supervisor() -> None:
    """SIGTERM to this process (uvicorn's graceful shutdown) when its supervisor dies, by any death.
    The supervisor may itself be PID 1 (a container's entrypoint): its pid comes from SUPERVISOR_ENV."""
    if SUPERVISOR_ENV not in os.environ:
        return
    supervisor = int(os.environ[SUPERVISOR_ENV])
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <sys/prctl.h>
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            logging.getLogger(__name__).warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker will "
                                                "outlive a supervisor killed with SIGKILL", ctypes.get_errno())
    if os.getppid() != supervisor:  # it died before the guard was set
        os.kill(os.getpid(), signal.SIGTERM)


#: the process ID tells `--workers N`'s workers apart (uvicorn's own lines name it when a worker starts)
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    """DERMAGAN_LOG_FORMAT=json: python-json-logger's formatter, its fields named as log collectors expect
    them, a record's `extra` fields added (the access lines'), uvicorn's `color_message` (ANSI codes) left out."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("%(levelname)s %(name)s %(process)d %(message)s",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
                         timestamp="time", reserved_attrs=[*RESERVED_ATTRS, "color_message"])


def _logging_config(settings: "Settings") -> dict[str, Any]:
    """logging.config for DERMAGAN_LOG_FORMAT: every record through one handler on stderr, JSON objects or
    TEXT_LOG_FORMAT lines."""
    formatter = {"()": json_formatter} if settings.log_format == "json" else {"format": TEXT_LOG_FORMAT}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"line": formatter},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line"}},
            "root": {"level": settings.log_level.upper(), "handlers": ["stderr"]}}


def _configure_logging(settings: "Settings") -> None:
    logging.config.dictConfig(_logging_config(settings))


def _uvicorn_log_config(settings: "Settings") -> dict[str, Any]:
    """uvicorn's logging: its loggers hand their records to the root's handler, in either format (uvicorn applies
    this in each worker process too, before our app exists). Its own config wrote text lines without time or pid
    ("INFO:     ...", the supervisor's "worker died" among them) beside ours."""
    uvicorn_loggers = ("uvicorn", "uvicorn.error", "uvicorn.access")
    return {**_logging_config(settings), "loggers": {n: {"handlers": [], "propagate": True} for n in uvicorn_loggers}}


def http_stack() -> tuple[str, str]:
    """(event loop, HTTP parser) uvicorn will run on: uvloop and httptools where installed (the
    serve extras list both), else asyncio and the pure-Python h11, which cost about twice the CPU
    per request -- most visible on the 503s of an overload (bench/results/stack-2026-12-02.md)."""
    def importable(name: str) -> bool:
        try:
            __import__(name)
        except ImportError:
            return False
        return True

    return ("uvloop" if importable("uvloop") else "asyncio"), ("httptools" if importable("httptools") else "h11")


def _log_http_stack(loop: str, http: str) -> None:
    log = logging.getLogger("dermagan.service")
    if (loop, http) == ("uvloop", "httptools"):
        log.info("HTTP: httptools on the uvloop event loop")
    else:
        log.warning("HTTP: %s on the %s event loop: uvloop and httptools are not both installed, so every "
                    "request costs more CPU (pip install uvloop httptools, or the dermagan[serve] extra)", http, loop)


#: below this many open files a server drops connections under an ordinary burst of clients
FEW_OPEN_FILES = 4096


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime and nginx's
    worker_rlimit_nofile do; workers inherit it. Each connection is a file: at a soft limit of 1024 (a login
    shell's, and a container's under Docker Engine 29 and later, hard limit 524288) the 1000th
    concurrent client was dropped without an answer -- libuv accepts and closes at once when out of files
    -- and nothing was logged. Returns (before, after), or None where there is no such limit to raise."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    log = logging.getLogger("dermagan.service")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if soft != resource.RLIM_INFINITY and (target == resource.RLIM_INFINITY or target > soft):
        if target == resource.RLIM_INFINITY:  # (macOS refuses "unlimited" for files; a bound it takes)
            target = max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if now != resource.RLIM_INFINITY and now < FEW_OPEN_FILES:
        log.warning("open files: limit %d (hard %d): about that many concurrent connections, and beyond them "
                    "clients are disconnected without an answer or a log line; raise it (ulimit -n, docker run "
                    "--ulimit nofile=65536, systemd LimitNOFILE=)", now, hard)
    elif now != soft:
        log.info("open files: soft limit raised from %d to %d (the hard limit)", soft, now)
    return soft, now


def http_protocol() -> Any:
    """uvicorn's `http` setting for `dermagan serve`: on httptools, its protocol with early refusal
    (the 503s of an overload answered without an ASGI task, shedding.py); else "h11"."""
    if http_stack()[1] != "httptools":
        return "h11"
    from dermagan.service.shedding import SheddingHttpToolsProtocol

    return SheddingHttpToolsProtocol


def _uvicorn_config(settings: "Settings", app: Any, **extra: Any) -> Any:
    import uvicorn

    log_config = _uvicorn_log_config(settings)
    tls = ({"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
           if settings.tls_certfile is not None else {})
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          root_path=settings.root_path, log_config=log_config, **tls,
                          loop=http_stack()[0], http=http_protocol(),
                          # uvicorn's own limit comes after ours: by then every request has had its 503
                          timeout_graceful_shutdown=int(settings.drain_timeout_s) + 2,
                          timeout_keep_alive=settings.keep_alive_s,
                          # the Gate logs each request's access line, with its ID (DERMAGAN_ACCESS_LOG)
                          access_log=False, server_header=False, **extra)


def _shared_base() -> str | None:
    """Where the supervisor keeps what its workers share: shared memory where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _metrics_dir(base: str | None) -> str:
    """A private, empty folder for the workers' metric values, named after this supervisor's pid."""
    return tempfile.mkdtemp(prefix=f"dermagan-metrics-{os.getpid()}-", dir=base)


_LEFTOVER = re.compile(r"dermagan-(?:metrics|admission)-(\d+)-")


def sweep_leftovers(base: str | None) -> list[str]:
    """Remove what supervisors that are gone left in `base` (one killed with SIGKILL cannot clean up):
    our metrics folders and admission files whose pid in the name is no live process; returns them.
    Our own pid counts as gone: the sweep runs before this supervisor makes its own, so a folder with
    our pid is an earlier supervisor's that had the same pid -- always so for a container's PID 1, whose
    /dev/shm (the pod's, on Kubernetes) outlives a restarted container."""
    from dermagan.service.admission import pid_alive

    folder = base or tempfile.gettempdir()
    removed = []
    for name in os.listdir(folder):
        m = _LEFTOVER.match(name)
        path = os.path.join(folder, name)
        try:  # (another supervisor starting at the same time may sweep it first)
            if m is None or os.stat(path).st_uid != os.getuid():
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and pid_alive(pid):
                continue
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed


class WorkerSocket(socket.socket):
    """The listening socket of `--workers N`: one per worker, all bound to one address with
    SO_REUSEPORT, so the kernel spreads new connections over the workers by a hash of the connection.

    On one shared socket the worker that polls first takes what is waiting: 64 keep-alive connections
    landed 64/0, 63/1, 57/7, 37/27 and 35/29 over 2 workers in five tries. The parent binds one
    socket and never listens on it (it holds the port, resolves port 0 and reports a bad address
    before any worker starts; a socket that does not listen receives no connections). uvicorn's
    supervisor pickles the socket for each worker it spawns, first or replacement: unpickling binds
    a fresh one there (`__reduce_ex__`), so every worker listens on its own, and a dead worker's
    socket leaves the group with it instead of holding connections nobody accepts.
    """

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        host, port = self.getsockname()[:2]
        return worker_socket, (host, port)


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEADDR, not listening yet; port 0: a free port.
    A one-process server binds it before loading its models, so a port in use is said at once, not after
    the models' warm-up (uvicorn binds after the app's start-up)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def worker_socket(host: str, port: int, *, probe: bool = False) -> WorkerSocket:
    """A TCP socket bound to (host, port) with SO_REUSEADDR and SO_REUSEPORT; not listening yet.

    probe (the parent): first bind a plain socket there, so a port that another server holds -- even
    another `--workers` dermagan, whose SO_REUSEPORT sockets would otherwise let us share its port
    silently -- fails with EADDRINUSE as a one-process server does; port 0 resolves to a free port."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    if probe:
        with bound_socket(host, port) as plain:
            address = (address[0], plain.getsockname()[1], *address[2:])
    sock = WorkerSocket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _log_address(settings: "Settings", sock: socket.socket, how: str = "") -> None:
    """uvicorn says where it listens only when it binds the socket itself."""
    host, port = sock.getsockname()[:2]
    keys = len(settings.api_keys)
    # whether clients need a key, said where the operator looks first (an empty DERMAGAN_API_KEY means none)
    auth = f"API key required: {keys} key{'' if keys == 1 else 's'}" if keys else "no API key: open to every client"
    logging.getLogger("uvicorn.error").info("dermagan serving on %s://%s:%d%s (%s)", settings.scheme,
                                            f"[{host}]" if ":" in host else host, port, how, auth)


def _cannot_listen(settings: "Settings", e: OSError) -> int:
    print(f"dermagan serve: cannot listen on {settings.host}:{settings.port}: {e.strerror or e}", file=sys.stderr)
    return 2


#: a worker that dies within this many seconds of its start is restarted later each time it does so again
QUICK_DEATH_S = 60.0
#: the longest wait before a worker that keeps dying is started again
MAX_RESTART_DELAY_S = 30.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a dead worker is started again, after `quick_deaths` deaths in a row, each within
    QUICK_DEATH_S of its start: at once for the first (an OOM kill, a crash), then 1, 2, 4 ... 30 s."""
    return 0.0 if quick_deaths <= 1 else min(2.0 ** (quick_deaths - 2), MAX_RESTART_DELAY_S)


def how_it_ended(exitcode: int | None) -> str:
    """A worker's end in words: `exit status 1`, `killed by SIGKILL`."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _serve_workers(settings: "Settings", overrides: dict[str, Any]) -> int:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from dermagan.service.listener import WorkerProcess  # uvicorn's, with plain HTTP at an HTTPS port answered

    log = logging.getLogger("uvicorn.error")

    class _Supervisor(Multiprocess):
        """uvicorn's supervisor with dermagan's process model: SIGHUP reloads in place, SIGTTIN / SIGTTOU do
        nothing, a worker is spawned with SIGHUP held, and a dead worker is logged as an error, counted
        (dermagan_worker_restarts_total) and, when it keeps dying, restarted ever later."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.restarts = 0
            self._count_restart: Any = None
            self._born: dict[int, float] = {}  # worker slot -> time.monotonic() of its process's start
            self._quick_deaths: dict[int, int] = {}  # worker slot -> deaths in a row, each soon after its start
            self._due: dict[int, float] = {}  # worker slot -> when its dead worker is started again

        def _spawn(self, idx: int) -> WorkerProcess:
            process = WorkerProcess(self.config, self.sockets)
            with _hup_held():
                process.start()
            self._born[idx] = time.monotonic()
            return process

        def init_processes(self) -> None:
            for idx in range(self.processes_num):
                self.processes.append(self._spawn(idx))

        def keep_subprocess_alive(self) -> None:
            """uvicorn's, with the death logged at ERROR with its cause, counted, and a backoff."""
            if self.should_exit.is_set():
                return
            for idx, process in enumerate(self.processes):
                if idx in self._due:
                    if time.monotonic() >= self._due[idx]:
                        del self._due[idx]
                        self.processes[idx] = self._spawn(idx)
                    continue
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                hung = process.exitcode is None
                process.kill()  # hung (it did not answer the health check): kill it
                process.join()
                if process.exitcode == STARTUP_FAILURE:  # (uvicorn's rule: the app itself cannot start)
                    log.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                    self.should_exit.set()
                    return
                if self.should_exit.is_set():
                    return
                lived = time.monotonic() - self._born.get(idx, 0.0)
                quick = self._quick_deaths.get(idx, 0) + 1 if lived < QUICK_DEATH_S else 1
                self._quick_deaths[idx] = quick
                delay = restart_delay(quick)
                self.restarts += 1
                self._restart_counted()
                cause = (f"no answer to the supervisor's health check in {self.config.timeout_worker_healthcheck} s: "
                         "killed" if hung else how_it_ended(process.exitcode))
                in_a_row = f", {quick} in a row within {QUICK_DEATH_S:g} s of their start" if quick > 1 else ""
                log.error("worker [%s] died (%s) %.1f s after its start; starting another%s (worker restarts: %d%s)",
                          process.pid, cause, lived, f" in {delay:g} s" if delay else "", self.restarts, in_a_row)
                if delay == 0:
                    self.processes[idx] = self._spawn(idx)
                else:
                    self._due[idx] = time.monotonic() + delay

        def _restart_counted(self) -> None:
            from dermagan.service.metrics import supervisor_restart_counter

            try:
                if self._count_restart is None:
                    self._count_restart = supervisor_restart_counter()
                self._count_restart()
            except Exception as e:  # a metric must never stop the supervisor
                log.warning("dermagan_worker_restarts_total not counted: %s", e)

        def handle_hup(self) -> None:
            """SIGHUP: every worker reloads its models in place (runtime.reload) instead of uvicorn's restart
            of the workers, whose replacements would refuse work while they warm up. A worker that is still
            loading reloads once warm; one waiting to be restarted will read the folder as it starts."""
            log.info("Received SIGHUP: each worker reloads its models in place")
            for idx, process in enumerate(self.processes):
                if process.pid is not None and idx not in self._due:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

        def _refuse_resize(self, name: str) -> None:
            """uvicorn's SIGTTIN / SIGTTOU add or remove a worker; ours are sized for their number (threads,
            budgets, upload places, 2N admission slots: a worker past 2N could never start)."""
            log.warning("Received %s: changing the number of workers is not supported (each worker's threads, "
                        "budgets and admission slots are sized for DERMAGAN_WORKERS=%d); restart with --workers N",
                        name, self.processes_num)

        def handle_ttin(self) -> None:
            self._refuse_resize("SIGTTIN")

        def handle_ttou(self) -> None:
            self._refuse_resize("SIGTTOU")

    from dermagan.service.admission import ADMISSION_ENV, create_shared_file
    from dermagan.service.metrics import MULTIPROC_ENV
    from dermagan.service.settings import ENV_PREFIX

    for key, value in overrides.items():  # the workers read their settings from the environment
        os.environ[ENV_PREFIX + key.upper()] = str(value)
    base = _shared_base()
    for path in sweep_leftovers(base):
        logging.getLogger("dermagan.service").info("removed %s, left by a supervisor that is gone", path)
    metrics_dir = _metrics_dir(base)
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    shared = os.environ[ADMISSION_ENV] = create_shared_file(settings.workers, base)  # one in-flight count for all
    try:
        config = _uvicorn_config(settings, "dermagan.service.cli:worker_app", factory=True, workers=settings.workers)
        if hasattr(socket, "SO_REUSEPORT"):
            try:
                sock: socket.socket = worker_socket(settings.host, settings.port, probe=True)
            except OSError as e:
                return _cannot_listen(settings, e)
            _log_address(settings, sock, f" with {settings.workers} workers, a SO_REUSEPORT socket each")
        else:  # one shared socket
            sock = config.bind_socket()
        supervisor = _Supervisor(config, sockets=[sock])  # (its handlers replace hold_early_sighup's)
        if take_early_sighup() is not None:
            logging.getLogger("dermagan.service").info("SIGHUP before the workers started: they load the models "
                                                       "folder as it is now")
        supervisor.run()
        failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
        return 2 if failed else 0
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.unlink(shared)


def settings_table() -> str:
    """The DERMAGAN_* table of service/settings.py's docstring (its one source), for `serve --settings`."""
    from dermagan.service import settings

    doc = settings.__doc__ or ""
    return "\n".join(line for line in doc.splitlines() if line.startswith("|"))


def tls_problem(settings: "Settings") -> str | None:
    """What is wrong with DERMAGAN_TLS_CERTFILE / _KEYFILE, loaded as uvicorn will load them (else a
    traceback from inside uvicorn, or, with --workers, from every worker); None when fine or unset."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    import ssl

    where = f"DERMAGAN_TLS_CERTFILE={settings.tls_certfile}, DERMAGAN_TLS_KEYFILE={settings.tls_keyfile}"
    for name, path in (("DERMAGAN_TLS_CERTFILE", settings.tls_certfile), ("DERMAGAN_TLS_KEYFILE", settings.tls_keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            return f"{name}: cannot read {path}: {e.strerror or e}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return f"{where}: the key is not this certificate's key"
        if "PEM lib" in str(e) or e.reason in ("PEM_LIB", "NO_START_LINE"):
            return f"{where}: not a PEM certificate (chain) and a PEM private key, in that order"
        return f"{where}: {e.reason or e}"
    return None


#: days before its end from which a certificate's coming expiry is warned of at start-up
TLS_EXPIRY_WARN_DAYS = 14


def tls_validity(settings: "Settings", now: float | None = None) -> str | None:
    """A warning where DERMAGAN_TLS_CERTFILE's certificate is not valid now (expired, or not yet valid) or ends
    within TLS_EXPIRY_WARN_DAYS: the service starts (a renewed file takes a restart), but clients that verify it
    refuse the connection; `serve --check` passed an expired one silently. None when fine, unset or unreadable."""
    if settings.tls_certfile is None:
        return None
    import ssl
    import time

    try:  # the standard library's own certificate decoder (what ssl's tests use); absent elsewhere: no warning
        cert = ssl._ssl._test_decode_cert(str(settings.tls_certfile))  # type: ignore[attr-defined]
        begins, ends = (ssl.cert_time_to_seconds(cert[k]) for k in ("notBefore", "notAfter"))
    except (AttributeError, KeyError, ValueError, OSError, ssl.SSLError):
        return None
    now = time.time() if now is None else now
    which = f"DERMAGAN_TLS_CERTFILE={settings.tls_certfile}"
    if now >= ends:
        return (f"{which}: the certificate expired on {cert['notAfter']}; clients that verify it refuse the "
                "connection: renew it")
    if now < begins:
        return f"{which}: the certificate is not valid before {cert['notBefore']} (this machine's clock?)"
    if ends - now < TLS_EXPIRY_WARN_DAYS * 86400:
        return f"{which}: the certificate expires on {cert['notAfter']}, in {(ends - now) / 86400:.1f} days: renew it"
    return None


def _check(settings: "Settings") -> int:
    """`dermagan serve --check`: the start-up of one worker (load, warm), a table of the models, shut down."""
    import asyncio

    from dermagan.service.metrics import Metrics
    from dermagan.service.runtime import ModelRuntime, StartupError

    runtime = ModelRuntime(settings.model_copy(update={"gc_freeze": False}), Metrics())

    async def check() -> str | None:
        try:
            await runtime.load()
        except StartupError as e:
            return str(e)
        try:
            await runtime.warm()
            return runtime.warm_error
        finally:
            await runtime.shutdown()

    problem = asyncio.run(check())
    if problem is not None:
        print(f"dermagan serve --check: it would refuse to start: {problem}", file=sys.stderr)
        return 2
    for name, e in runtime.engines.items():
        default = ", ".join(runtime.defaults(name)) or "by name only"
        print(f"{name:<24} {e.entry.task:<13} v{e.entry.version:<6} {e.provider:<26} serves: {default}")
    print(f"ok: {len(runtime.engines)} models of {settings.models_dir} verified (sha256), opened and warmed "
          f"(batch sizes {list(settings.buckets)})")
    return 0


def run(args: argparse.Namespace) -> int:
    hold_early_sighup()  # first: a SIGHUP while the models load must not kill the server (exit 129)
    from dermagan.manifest import ManifestError, load_manifest
    from dermagan.service.settings import Settings, SettingsError, models_dir_hint, unknown_variables

    if args.settings:
        print(settings_table())
        return 0
    overrides: dict[str, Any] = {k: v for k, v in (("models_dir", args.models_dir), ("host", args.host),
                                                   ("port", args.port), ("workers", args.workers),
                                                   ("log_level", args.log_level)) if v is not None}
    try:
        settings = Settings.from_env(**overrides)
        if not load_manifest(settings.models_dir, verify=True).models:  # refuse early, with a one-line message
            from dermagan.service.runtime import no_models

            raise ManifestError(no_models(settings.models_dir))
    except (SettingsError, ManifestError) as e:
        print(f"dermagan serve: {e}{models_dir_hint('models_dir' in overrides)}", file=sys.stderr)
        return 2
    problem = tls_problem(settings)
    if problem is not None:
        print(f"dermagan serve: {problem}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    expiry = tls_validity(settings)
    if expiry is not None:  # starts all the same (as nginx does), said at start-up and by --check
        logging.getLogger("dermagan.service").warning("%s", expiry)
    unknown = unknown_variables()
    if unknown:  # once, here: not in each of --workers N's workers
        logging.getLogger("dermagan.service").warning(
            "%s %s no setting, ignored (`dermagan serve --settings` lists the settings)", ", ".join(unknown),
            "is" if len(unknown) == 1 else "are")
    if args.check:
        return _check(settings)
    _log_http_stack(*http_stack())
    raise_open_files_limit()
    if settings.workers > 1:
        return _serve_workers(settings, overrides)

    from uvicorn.config import STARTUP_FAILURE

    from dermagan.service.app import create_app

    try:
        sock = bound_socket(settings.host, settings.port)
    except OSError as e:
        return _cannot_listen(settings, e)

    from dermagan.service.listener import Server  # uvicorn's, with plain HTTP at an HTTPS port answered

    server = Server(_uvicorn_config(settings, create_app(settings)))
    # listening now: what uvicorn would have logged had it bound the socket
    server.on_listening = lambda: _log_address(settings, sock)
    # Once drained, uvicorn raises again the signal that stopped it, with the handler it found before it
    # started: with the default one a drained process died by SIGTERM (exit status 143), except as a
    # container's PID 1 (the kernel ignores it there). This handler, found and put back by uvicorn, takes
    # that second SIGTERM, so a drained stop exits 0 everywhere, as `--workers N` does. SIGINT (Ctrl-C)
    # keeps uvicorn's behaviour. A SIGTERM before uvicorn listens for it stops the process at once (exit 0).
    def on_sigterm(signum: int, frame: Any) -> None:
        if not server.started and not server.should_exit:
            raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.run(sockets=[sock])  # the app's lifespan chains its drain onto uvicorn's SIGTERM / SIGINT handlers
    except SystemExit as e:  # uvicorn exits 3 when the lifespan refused (a model it cannot serve, logged)
        if e.code == STARTUP_FAILURE:
            return 2
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0 if server.started else 2
