"""The process model of `dermagan serve` around starts, deaths and signals, for real (subprocesses).

Servers run tests/e2e/hooked_serve.py, `dermagan serve` with hooks that slow a worker's warm-up or model
loading, or make a starting worker exit, so the windows these tests need are seconds wide on any box.
Proves: a worker that replaces a dead one takes no connection before it is warm (no 503 not_ready, /readyz
steady), and ends up serving the models of a SIGHUP that came while it warmed; a dead worker is an ERROR line
with its cause and is counted (dermagan_worker_restarts_total), and one that keeps dying is restarted ever
later; SIGTTIN / SIGTTOU change nothing; a SIGHUP to a worker still starting up, or to a one-process server
still loading its models, kills neither; a SIGHUP during a reload runs one more reload after it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import BASE_ENV, Served

HOOKED = Path(__file__).with_name("hooked_serve.py")
MODELS = "fixture-segment,fixture-generate"


@contextmanager
def hooked(models_dir: Path, **env: str) -> Iterator[Served]:
    """hooked_serve.py on a free loopback port, not waited for; killed on exit if still running."""
    import socket

    log = Path(tempfile.mkstemp(prefix="dermagan-hooked-", suffix=".log")[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(HOOKED), "serve", "--models-dir", str(models_dir)], stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, **BASE_ENV, "DERMAGAN_MODELS": MODELS, **env, "DERMAGAN_PORT": str(port)})
    try:
        yield Served(proc, log, f"http://127.0.0.1:{port}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for child in _children(proc.pid):  # workers outliving a killed supervisor (PR_SET_PDEATHSIG: not for long)
            _kill(child)
        log.unlink(missing_ok=True)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _until(what: Callable[[], object], s: Served, timeout_s: float = 60, step: float = 0.05) -> object:
    t0 = time.monotonic()
    while not (got := what()):
        assert s.proc.poll() is None, f"exit status {s.proc.returncode}: {s.text()[-4000:]}"
        assert time.monotonic() - t0 < timeout_s, f"timed out: {s.text()[-4000:]}"
        time.sleep(step)
    return got


def _ready(s: Served) -> int:
    return len(re.findall(r"ready: \d+ models?", s.text()))


def _children(pid: int) -> list[int]:
    """The worker processes (multiprocessing's spawn) of a supervisor, as they are now."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for kid in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                out.append(int(kid))
        except OSError:
            pass
    return out


def _logged_by(s: Served, pid: int, text: str) -> bool:
    return any(f"[{pid}]" in line and text in line for line in s.text().splitlines())


def _set_version(folder: Path, version: str) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    for entry in doc["models"]:
        if entry["name"] in MODELS.split(","):
            entry["version"] = version
    path.write_text(json.dumps(doc, indent=2))


def _sample(url: str, line_start: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def test_a_replacement_worker_listens_warm_and_catches_up_on_a_reload(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    # 2 models x 1.5 s: each worker warms ~3 s
    with hooked(folder, DERMAGAN_WORKERS="2", HOOK_SLOW_WARM_S="1.5") as s:
        _until(lambda: _ready(s) >= 2, s)
        pids = _children(s.proc.pid)
        assert len(pids) == 2, pids

        # SIGTTIN / SIGTTOU: uvicorn would add or remove a worker; here they are refused, and nothing changes
        s.proc.send_signal(signal.SIGTTIN)
        _until(lambda: "Received SIGTTIN: changing the number of workers is not supported" in s.text(), s, 10)
        s.proc.send_signal(signal.SIGTTOU)
        _until(lambda: "Received SIGTTOU: changing the number of workers is not supported" in s.text(), s, 10)
        assert sorted(_children(s.proc.pid)) == sorted(pids)
        assert s.text().count("Started server process") == 2

        os.kill(pids[0], signal.SIGKILL)
        died = f"worker [{pids[0]}] died (killed by SIGKILL)"
        _until(lambda: died in s.text(), s, 10)
        assert re.search(rf"ERROR.*{re.escape(died)} [0-9.]+ s after its start; starting another \(worker restarts: 1\)",
                         s.text()), s.text()
        new = _until(lambda: [p for p in _children(s.proc.pid) if p not in pids], s, 10)[0]  # type: ignore[index]
        # once the replacement has read the folder, the operator changes it and sends SIGHUP; it arrives while the
        # replacement warms: deferred, then run once it is warm
        _until(lambda: _logged_by(s, new, "model fixture-generate (generate, v0-fixture) loaded"), s, 30, 0.01)
        _set_version(folder, "2")
        s.proc.send_signal(signal.SIGHUP)
        codes, t0 = [], time.monotonic()
        while not _logged_by(s, new, "ready: 2 models"):  # new connections: they reach the warm worker only
            assert time.monotonic() - t0 < 60 and s.proc.poll() is None, s.text()
            codes.append((httpx.get(s.url + "/readyz", timeout=10).status_code,
                          httpx.post(s.url + "/generate", json={"kind": "hand"}, timeout=10).status_code))
            time.sleep(0.05)
        assert len(codes) >= 5 and set(codes) == {(200, 200)}, codes
        assert _logged_by(s, new, "reload deferred: the models are warming up"), s.text()
        _until(lambda: s.text().count("reloaded in") >= 2, s, 60)  # the other worker's, and the deferred one
        assert _logged_by(s, new, "reloaded in"), s.text()
        versions = [{m["name"]: m["version"] for m in httpx.get(s.url + "/v1/models", timeout=10).json()}
                    for _ in range(12)]  # new connections: both workers
        assert all(v == {"fixture-segment": "2", "fixture-generate": "2"} for v in versions), versions
        assert _sample(s.url, "dermagan_worker_restarts_total") == 1
        assert _sample(s.url, 'dermagan_model_reloads_total{result="deferred"}') == 1
        assert _sample(s.url, 'dermagan_model_reloads_total{result="ok"}') == 2  # each worker's own
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.text()


def test_a_worker_that_keeps_dying_is_restarted_ever_later_and_a_sighup_while_it_starts_kills_none(
        models_dir: Path, tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    with hooked(models_dir, DERMAGAN_WORKERS="2", HOOK_CRASH_FILE=str(crash)) as s:
        _until(lambda: _ready(s) >= 2, s)
        pids = _children(s.proc.pid)
        crash.write_text("")
        os.kill(pids[0], signal.SIGKILL)
        # killed (1st death soon after its start: at once), exit 1 (2nd: in 1 s), exit 1 (3rd: in 2 s)
        _until(lambda: "starting another in 2 s" in s.text(), s, 30)
        lines = [line for line in s.text().splitlines() if "died (" in line]
        assert all("ERROR" in line for line in lines), lines
        assert "killed by SIGKILL" in lines[0] and "starting another (worker restarts: 1)" in lines[0], lines
        assert "exit status 1" in lines[1] and "starting another in 1 s (worker restarts: 2, 2 in a row" in lines[1]
        assert "exit status 1" in lines[2] and "starting another in 2 s (worker restarts: 3, 3 in a row" in lines[2]
        crash.unlink()
        known = set(_children(s.proc.pid))
        # the next worker (due in 2 s) gets SIGHUP the moment it exists, long before its Python code runs
        new = _until(lambda: [p for p in _children(s.proc.pid) if p not in known], s, 10, 0.002)[0]  # type: ignore[index]
        os.kill(new, signal.SIGHUP)
        _until(lambda: _logged_by(s, new, "ready: 2 models") or f"worker [{new}] died" in s.text(), s, 60)
        assert f"worker [{new}] died" not in s.text(), s.text()
        # recorded before the lifespan took SIGHUP over (a stalled box might have been later: then a reload's line)
        assert _logged_by(s, new, "SIGHUP during start-up") or _logged_by(s, new, "reload"), s.text()
        assert _sample(s.url, "dermagan_worker_restarts_total") == 3
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.text()


def test_a_sighup_while_one_process_loads_its_models_does_not_kill_it(models_dir: Path) -> None:
    with hooked(models_dir, HOOK_SLOW_LOAD_S="2") as s:  # the models take 2 s more to open
        _until(lambda: "HTTP: " in s.text(), s, 30, 0.01)  # logged as `serve` starts, before the models load
        s.proc.send_signal(signal.SIGHUP)
        _until(lambda: _ready(s) >= 1, s, 60)
        assert s.proc.poll() is None, s.text()
        assert "SIGHUP during start-up" in s.text() or "reload deferred" in s.text(), s.text()  # (a stalled box: late)
        assert httpx.get(s.url + "/readyz", timeout=10).status_code == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.text()


def test_a_sighup_during_a_reload_runs_one_more_after_it(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    with hooked(folder, HOOK_SLOW_WARM_S="1") as s:  # a reload warms 2 models: 2 s
        _until(lambda: _ready(s) >= 1 and httpx.get(s.url + "/readyz", timeout=10).status_code == 200, s)
        _set_version(folder, "2")
        s.proc.send_signal(signal.SIGHUP)
        # the reload has read the folder once it has opened its models (logged), and warms them now
        _until(lambda: "model fixture-generate (generate, v2) loaded" in s.text(), s, 30, 0.01)
        _set_version(folder, "3")
        s.proc.send_signal(signal.SIGHUP)
        _until(lambda: "reload deferred: a reload is under way" in s.text(), s, 10)
        _until(lambda: s.text().count("reloaded in") >= 2, s, 60)
        assert {m["name"]: m["version"] for m in httpx.get(s.url + "/v1/models", timeout=10).json()} == {
            "fixture-segment": "3", "fixture-generate": "3"}
        assert _sample(s.url, 'dermagan_model_reloads_total{result="ok"}') == 2
        assert _sample(s.url, 'dermagan_model_reloads_total{result="deferred"}') == 1
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.text()
