"""What answering plain HTTP at the HTTPS port costs TLS clients: `dermagan serve` with DERMAGAN_TLS_* as it runs
(service/listener.py: connections accepted by the service, the first byte peeked, then the loop's TLS transport)
against the same server with the event loop's own TLS server (`uvicorn.Server.startup` put back in its place), side
by side in one run, the arms alternated over rounds.

Cells: new connections a second (each: TCP connect, TLS 1.3 handshake, GET /healthz, close; `--procs` client
processes in a closed loop) -- where the listener's per-connection work sits -- and keep-alive requests a second
over TLS (GET /healthz on 16 connections, nghttp2's h2load over HTTP/1.1, where installed) -- where it should cost
nothing. The client shares the machine's cores with the server: compare the arms, not the absolute figures.

    .venv/bin/python bench/bench_tls.py --out bench/results/tls-$(date +%F).md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests" / "service")]

import load  # noqa: E402

#: the arm with the event loop's own TLS server: the listener's Server with uvicorn's startup put back
_LOOP_TLS = ("import sys, uvicorn\nimport dermagan.service.listener as listener\n"
             "listener.Server.startup = uvicorn.Server.startup\nfrom dermagan.cli import main\n"
             "sys.exit(main(['serve']))\n")
_AS_IS = "import sys\nfrom dermagan.cli import main\nsys.exit(main(['serve']))\n"
ARMS = {"listener": ["-c", _AS_IS], "loop TLS": ["-c", _LOOP_TLS]}  # (both launched alike)


def pki(folder: Path) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA) from a throwaway test CA (trustme)."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def start(arm: str, port: int, models: str, cert: Path, key: str | Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DERMAGAN_HOST": "127.0.0.1", "DERMAGAN_PORT": str(port), "DERMAGAN_MODELS_DIR": models,
           "DERMAGAN_TLS_CERTFILE": str(cert), "DERMAGAN_TLS_KEYFILE": str(key), "DERMAGAN_LOG_LEVEL": "warning",
           "DERMAGAN_PROVIDERS": "CPUExecutionProvider"}
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, *ARMS[arm]], stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if _get(port, context, "/readyz").startswith(b"HTTP/1.1 200"):
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{arm} not ready; see {log}")


def _get(port: int, context: ssl.SSLContext, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def _connector(port: int, ca: str, seconds: float, start_at: float, out: "mp.Queue[tuple[int, int, float]]") -> None:
    context = ssl.create_default_context(cafile=ca)
    while time.time() < start_at:
        time.sleep(0.001)
    done = errors = 0
    cpu0, t_end = time.process_time(), time.time() + seconds
    while time.time() < t_end:
        try:
            done += _get(port, context, "/healthz").startswith(b"HTTP/1.1 200")
        except OSError:
            errors += 1
    out.put((done, errors, time.process_time() - cpu0))


def new_connections(port: int, ca: Path, procs: int, seconds: float) -> tuple[float, int, float]:
    """(new TLS connections answered a second, errors, client CPU seconds) with `procs` closed-loop clients."""
    queue: mp.Queue[tuple[int, int, float]] = mp.Queue()
    start_at = time.time() + 0.5
    workers = [mp.Process(target=_connector, args=(port, str(ca), seconds, start_at, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join()
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results), sum(r[2] for r in results)


def keep_alive(port: int, seconds: float, connections: int = 16) -> float | None:
    """GET /healthz requests a second over `connections` kept-alive TLS connections (h2load, HTTP/1.1)."""
    exe = shutil.which("h2load")
    if exe is None:
        return None
    done = subprocess.run([exe, "--h1", "-D", str(max(1, round(seconds))), "-c", str(connections), "-m", "1",
                           f"https://127.0.0.1:{port}/healthz"], capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"finished in [0-9.]+s, ([0-9.]+) req/s", done.stdout)
    ok = re.search(r"status codes: (\d+) 2xx", done.stdout)
    if m is None or ok is None:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return float(m.group(1))


def plain_http_answer(port: int) -> str:
    """What a plain-HTTP GET at the HTTPS port gets: the status line, or how the connection ended."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = s.recv(65536)
    except OSError as e:
        return type(e).__name__
    return answer.split(b"\r\n", 1)[0].decode() if answer else "closed, no answer"


def server_cpu_s(proc: subprocess.Popen[bytes]) -> float:
    return load.proc_cpu_s([f"/proc/{proc.pid}/stat"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="rounds, the arms alternated (keep-alive cells swing +-10 %%)")
    p.add_argument("--seconds", type=float, default=5.0, help="per cell and round")
    p.add_argument("--procs", type=int, default=4, help="client processes of the new-connection cell")
    p.add_argument("--out", help="write the Markdown report here too")
    args = p.parse_args(argv)

    from fixture_models import build_models

    tmp = Path(tempfile.mkdtemp(prefix="dermagan-bench-tls-"))
    models = tmp / "models"
    build_models(models)
    cert, key, ca = pki(tmp)
    rows: dict[str, dict[str, list[float]]] = {arm: {"conn": [], "errors": [], "conn_cpu": [], "ka": [], "ka_cpu": []}
                                          for arm in ARMS}
    plain: dict[str, set[str]] = {arm: set() for arm in ARMS}
    for r in range(args.rounds):
        for arm in (list(ARMS) if r % 2 == 0 else list(reversed(ARMS))):
            port = load.free_port()
            proc = start(arm, port, str(models), cert, key, tmp / f"{arm.replace(' ', '-')}.log")
            try:
                plain[arm].add(plain_http_answer(port))
                cpu0 = server_cpu_s(proc)
                rate, errors, _ = new_connections(port, ca, args.procs, args.seconds)
                cpu1 = server_cpu_s(proc)
                rows[arm]["conn"].append(rate)
                rows[arm]["errors"].append(errors)
                rows[arm]["conn_cpu"].append((cpu1 - cpu0) / max(rate * args.seconds, 1) * 1e3)
                cpu2 = server_cpu_s(proc)
                ka = keep_alive(port, args.seconds)
                if ka is not None:
                    rows[arm]["ka"].append(ka)
                    rows[arm]["ka_cpu"].append((server_cpu_s(proc) - cpu2) / (ka * round(args.seconds)) * 1e6)
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"round {r + 1} {arm}: {rate:.0f} new connections/s, keep-alive {ka} req/s", flush=True)

    info = load.machine()
    lines = [
        "# TLS: the service's listener (plain HTTP answered) vs the event loop's own TLS server",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        f"- **server**: `dermagan serve`, one process, fixture models, DERMAGAN_TLS_* (trustme test CA, "
        f"{ssl.OPENSSL_VERSION}); log level warning",
        f"- **client**: {args.procs} processes opening a TLS 1.3 connection per GET /healthz (Python ssl, "
        f"closed loop); keep-alive: h2load --h1, 16 connections; {args.seconds:g} s per cell, {args.rounds} rounds, "
        "arms alternated; median of the rounds (range)",
        "",
        "| arm | plain HTTP at the port gets | new connections/s | range | server CPU ms a connection | errors | "
        "keep-alive req/s | range | server CPU µs a keep-alive request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, v in rows.items():
        ka = (f"{statistics.median(v['ka']):.0f} | {min(v['ka']):.0f}-{max(v['ka']):.0f} | "
              f"{statistics.median(v['ka_cpu']):.0f}" if v["ka"] else "h2load not installed | - | -")
        lines.append(f"| {arm} | {', '.join(sorted(plain[arm]))} | {statistics.median(v['conn']):.0f} | {min(v['conn']):.0f}-{max(v['conn']):.0f} | "
                     f"{statistics.median(v['conn_cpu']):.2f} | {int(sum(v['errors']))} | {ka} |")
    a, b = (statistics.median(rows[arm]["conn"]) for arm in ARMS)
    lines += ["", f"New connections: listener / loop TLS = **{a / b:.2f}x**."]
    if rows["listener"]["ka"] and rows["loop TLS"]["ka"]:
        mine, theirs = rows["listener"], rows["loop TLS"]
        per_round = sorted(m / t for m, t in zip(mine["ka_cpu"], theirs["ka_cpu"]))
        lines.append(f"Keep-alive: listener / loop TLS = **{statistics.median(mine['ka']) / statistics.median(theirs['ka']):.2f}x** "
                     f"requests a second; server CPU a request, listener / loop TLS in the same round: median "
                     f"{statistics.median(per_round):.2f} (rounds {per_round[0]:.2f}-{per_round[-1]:.2f}).")
    load.publish("\n".join(lines) + "\n", args.out)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
