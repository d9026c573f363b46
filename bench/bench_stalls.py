"""Clients that stall: what answers nobody reads, silent connections, trickled request heads and trickled
uploads hold in `dermagan serve` (issue 7: a slow or disconnecting client must not block others or leak memory).

Six scenarios, `--clients` connections each, one after another:
- unread: each POSTs a WxH noise PNG with a mask to /eczema/add (the PNG answer is ~3 bytes a pixel) and
  never reads. Reported: the server's RSS before, once every answer is made, and `--wait` s later; how many
  of the connections the server has ended by then, and after how long.
- silent: connections that send nothing.
- trickle: a request head sent one byte every `--trickle-every` s (slower than it is read, never whole).
- slow-upload: a whole POST /eczema/add head, then its body one byte every `--trickle-every` s (an upload that
  never pauses for long, and would end long after the deadline): it holds an upload place while it lasts.
- slow-read: the unread scenario's request, then 2 KiB of its answer read every `--read-every` s (512 bytes
  a second by default): a client that reads, only very slowly.
- big-head: a request head with one header of `--head-mb` MB, sent as fast as the server takes it, never ended.
A connection counts as ended when the kernel says so (TCP_INFO state no longer ESTABLISHED): a reset or the
server's FIN. A normal request is timed during each scenario. Against another build (an older commit), start
it yourself and pass `--url` and `--pid`.

    .venv/bin/python bench/bench_stalls.py --out bench/results/stalls-$(date +%F).md
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

import httpx  # noqa: E402
import load  # noqa: E402
import numpy as np  # noqa: E402
from bench_peers import models_folder  # noqa: E402
from PIL import Image  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402

ESTABLISHED = 1  # Linux's TCP_ESTABLISHED, the first byte of struct tcp_info


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def unread_request(size: int) -> bytes:
    """A whole POST /eczema/add of a size x size noise PNG with a small mask: its answer is about 3 size**2 bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8: size // 4, size // 8: size // 4] = 255
    body, ctype = load.multipart({"image": _png(noise), "mask": _png(mask)})
    return (f"POST /eczema/add HTTP/1.1\r\nHost: bench\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def slow_upload_request() -> bytes:
    """A whole POST /eczema/add of a 128 px gradient and its mask (a few KiB)."""
    ramp = np.linspace(40, 220, 128, dtype=np.uint8)
    image = np.dstack([np.tile(ramp, (128, 1))] * 3)
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 32:96] = 255
    body, ctype = load.multipart({"image": _png(image), "mask": _png(mask)})
    return (f"POST /eczema/add HTTP/1.1\r\nHost: bench\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connecting: the window it offers)
    sock.connect((host, int(port)))
    return sock


def _ended(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != ESTABLISHED


def _counter(url: str, reason: str) -> str:
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return "-"
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("dermagan_request_failures_total{") and f'reason="{reason}"' in line]
    return f"{sum(values):g}" if values else "- (no line: none counted, or a build that does not count it)"


def scenario(server: load.ServerProcess, name: str, clients: int, wait_s: float, size: int,
             trickle_every_s: float, read_every_s: float, head_mb: int = 100) -> dict[str, object]:
    request = unread_request(size) if name in ("unread", "slow-read") else b""
    socks = [_connect(server.url) for _ in range(clients)]
    started = time.monotonic()
    rss0 = server.rss_mb()
    stop = threading.Event()

    def read_slowly(sock: socket.socket) -> None:
        while not stop.wait(read_every_s):
            try:
                if not sock.recv(2048):
                    return
            except OSError:
                return

    def big_head(sock: socket.socket) -> None:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Big: ")
            for _ in range(head_mb):
                if stop.is_set():
                    return
                sock.sendall(b"a" * (1 << 20))
        except OSError:
            return

    def trickle(sock: socket.socket) -> None:
        if name == "trickle":
            data = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 10_000
        else:  # slow-upload: the head at once, then the body
            head, _, data = slow_upload_request().partition(b"\r\n\r\n")
            sock.sendall(head + b"\r\n\r\n")
        for byte in data:
            if stop.wait(trickle_every_s) or _ended(sock):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    threads = []
    for sock in socks:
        if name == "unread":
            sock.sendall(request)
        elif name in ("trickle", "slow-upload"):
            threads.append(threading.Thread(target=trickle, args=(sock,), daemon=True))
            threads[-1].start()
        elif name == "big-head":
            threads.append(threading.Thread(target=big_head, args=(sock,), daemon=True))
            threads[-1].start()
        elif name == "slow-read":
            sock.sendall(request)
            threads.append(threading.Thread(target=read_slowly, args=(sock,), daemon=True))
            threads[-1].start()
    ended_at: dict[int, float] = {}
    rss_made = rss0
    probe_s: list[float] = []
    while time.monotonic() - started < wait_s:
        for i, sock in enumerate(socks):
            if i not in ended_at and _ended(sock):
                ended_at[i] = time.monotonic() - started
        rss_made = max(rss_made, server.rss_mb())
        t0 = time.monotonic()
        try:
            ok = httpx.get(server.url + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        probe_s.append(time.monotonic() - t0 if ok else float("inf"))
        time.sleep(0.2)
    rss1 = server.rss_mb()
    stop.set()
    for sock in socks:
        sock.close()
    for t in threads:
        t.join(5)
    times = sorted(ended_at.values())
    return {"name": name, "clients": clients, "ended": len(times), "first": times[0] if times else None,
            "last": times[-1] if times else None, "rss": (rss0, rss_made, rss1), "probe_max": max(probe_s),
            "probe_failed": sum(p == float("inf") for p in probe_s)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--size", type=int, default=3000, help="unread: the uploads' side in pixels")
    p.add_argument("--wait", type=float, default=20.0, help="seconds each scenario watches its connections")
    p.add_argument("--trickle-every", type=float, default=1.0)
    p.add_argument("--read-every", type=float, default=4.0, help="slow-read: seconds between reads of 2 KiB")
    p.add_argument("--head-mb", type=int, default=100, help="big-head: the header's size in MB")
    p.add_argument("--idle", type=float, default=5.0,
                   help="the started server's DERMAGAN_SEND_IDLE_S, DERMAGAN_HEAD_TIMEOUT_S, DERMAGAN_UPLOAD_IDLE_S and "
                        "DERMAGAN_KEEP_ALIVE_S")
    p.add_argument("--scenarios", default="unread,silent,trickle,slow-upload,slow-read,big-head")
    p.add_argument("--url", help="measure a server started elsewhere (with --pid)")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args(argv)
    info = load.machine()
    if a.url:
        server, what = load.ServerProcess.attach(a.url, a.pid), f"a server started elsewhere ({a.url}, pid {a.pid})"
    else:
        models_dir, _ = models_folder(a.models_dir)
        add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
        server = load.dermagan_server(str(models_dir), load.free_port(), models=add, providers="CPUExecutionProvider",
                                      send_idle_s=a.idle, head_timeout_s=a.idle, upload_idle_s=a.idle,
                                      keep_alive_s=max(1, round(a.idle)),
                                      log_level="warning").start()
        what = (f"`dermagan serve` ({add}), DERMAGAN_SEND_IDLE_S = DERMAGAN_HEAD_TIMEOUT_S = DERMAGAN_UPLOAD_IDLE_S = "
                f"{a.idle:g}, "
                f"DERMAGAN_KEEP_ALIVE_S = {max(1, round(a.idle))}")
    try:
        rows = [scenario(server, name, a.clients, a.wait, a.size, a.trickle_every, a.read_every, a.head_mb)
                for name in a.scenarios.split(",")]
        counted = {reason: _counter(server.url, reason)
                   for reason in ("send_stalled", "head_timeout", "upload_stalled", "head_too_large")}
    finally:
        server.stop()
    lines = [f"# Clients that stall: {what}", ""] + [f"- **{k}**: {v}" for k, v in info.items()] + [
        f"- **scenarios**: {a.clients} connections each, watched for {a.wait:g} s; unread: a {a.size}x{a.size} noise PNG "
        f"masked add each (PNG answer ~{3 * a.size * a.size / 2**20:.0f} MiB), receive buffer 4 KiB, never read; "
        f"silent: nothing sent; trickle: a request head, one byte every {a.trickle_every:g} s; slow-upload: a "
        f"{len(slow_upload_request())}-byte POST /eczema/add, its head at once, then its body one byte every "
        f"{a.trickle_every:g} s; slow-read: as unread, then 2 KiB of the answer read every {a.read_every:g} s; "
        f"big-head: a head with a {a.head_mb} MB header, sent as fast as it is taken",
        "", "| scenario | connections ended by the server | first / last ended after s | RSS MiB before -> peak -> "
        "at the end | /readyz during: slowest ms, failed |", "|---|---|---|---|---|"]
    for r in rows:
        first = "-" if r["first"] is None else f"{r['first']:.1f} / {r['last']:.1f}"
        rss0, peak, rss1 = r["rss"]  # type: ignore[misc]
        probe = "-" if r["probe_max"] == float("inf") else f"{1000 * r['probe_max']:.0f}"  # type: ignore[operator]
        lines.append(f"| {r['name']} | {r['ended']} of {r['clients']} | {first} | {rss0:.0f} -> {peak:.0f} -> {rss1:.0f} | "
                     f"{probe}, {r['probe_failed']} |")
    lines += ["", "Counted by the server: " + ", ".join(f"{k} {v}" for k, v in counted.items()) + "."]
    load.publish("\n".join(lines) + "\n", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
