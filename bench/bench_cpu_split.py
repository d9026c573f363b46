"""Where the CPU goes under open-loop load: server (by part, sampled with py-spy) and load generator.

Why: on a small machine the load generator and the server share the cores, so an overload's lost
goodput is CPU spent elsewhere -- by the client, by the rejections, or by the served requests
themselves. This starts `dermagan serve --workers N`, offers Poisson load at each `--rates` value for
`--seconds`, and meanwhile samples every worker process with py-spy (`pip install py-spy`; it needs
ptrace rights over the workers). Each sample is put in one part by the frames on its stack:

- inference: ONNX Runtime's `Session.run` (the batcher's inference thread);
- codec threads: decode, pre/post-processing and PNG encoding in the codec thread pool;
- loop, served: Python on the event loop for accepted requests (routing, multipart, batching);
- loop, rejected: the admission 503 (the early refusal in the HTTP protocol, or the gate's response
  and the drained body);
- loop, HTTP layer: uvicorn's Python protocol code (parsing callbacks, writes), the ASGI middleware
  and the admission gate, both kinds;
- loop, I/O in C: time in the event loop itself (uvloop/libuv: sockets, epoll, httptools'
  C parser, callbacks' plumbing), both kinds;
- other: anything else (other threads, metrics, start-up leftovers).

Part shares x the server's measured CPU seconds give CPU per part; differences between two rates
show what the extra offered load costs. Samples are wall-clock samples of non-idle threads, so a
thread waiting for the CPU counts as busy: shares are approximate, the CPU seconds are exact. A last
table gives each thread role's CPU exactly, from /proc: the event loop (each worker's main thread), the
inference and codec threads (by the kernel names service/threadnames.py gives them) and the rest, per
answered request too -- py-spy's "other" there was the codec threads runnable but not yet running
(2026-12-08: 8.6 % of the samples, 0.00 cores of CPU).

    .venv/bin/python bench/bench_cpu_split.py --rates 900,2300 --out bench/results/cpu-split-$(date +%F).md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(HERE.parent / "tests" / "service")]

import load  # noqa: E402
from bench_peers import models_folder, sample_request  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402

PARTS = ("inference", "codec threads", "loop, served", "loop, rejected", "loop, HTTP layer", "loop, I/O in C", "other")

# (part, any of these frame fragments on the stack); the first rule that matches wins
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inference", ("Session.run", "Engine.run")),
    ("codec threads", ("run_codec", "_WorkItem.run")),
    ("other", ("Thread._bootstrap",)),
    ("loop, rejected", ("_drain_body", "Prebuilt.__call__", "service/shedding.py")),
    ("loop, served", ("service/pipeline.py", "service/uploads.py", "service/batcher.py", "starlette/routing.py",
                      "fastapi/routing.py", "multipart")),
    ("loop, HTTP layer", ("uvicorn/", "starlette/", "fastapi/", "service/app.py", "prometheus_client/")),
)


def classify(stack: str) -> str:
    """The part of one py-spy stack (frames joined by ';', outermost first). On the event loop's
    thread only the frames inside the loop's run call count (those outside are uvicorn's start-up
    frames, on every stack); none there = the loop's own C code."""
    frames = stack.split(";")
    runs = [i for i, frame in enumerate(frames) if frame.startswith("Runner.run ")]
    if runs:
        frames = frames[runs[-1] + 1:]
        if not frames:
            return "loop, I/O in C"
    inner = ";".join(frames)
    for part, fragments in RULES:
        if any(f in inner for f in fragments):
            return part
    return "other"


def split(raw_files: list[Path]) -> Counter[str]:
    """Samples per part over py-spy `--format raw` files (one 'stack count' per line)."""
    parts: Counter[str] = Counter()
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                parts[classify(stack)] += int(count)
    return parts


#: the workers' threads by role, from their kernel names (service/threadnames.py names the pools' threads)
ROLES = ("event loop", "inference threads", "codec threads", "other threads")


def role_of(pid: int, tid: int, comm: str) -> str:
    if tid == pid:
        return "event loop"
    if comm.startswith("infer-"):
        return "inference threads"
    if comm.startswith("codec_"):
        return "codec threads"
    return "other threads"


def role_cpu_s(pids: list[int]) -> dict[str, float]:
    """CPU seconds of the workers' threads by role (exact, from /proc; a thread that ended meanwhile counts
    nothing, so take it over a span in which the pools keep their threads)."""
    paths: dict[str, list[str]] = {role: [] for role in ROLES}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            paths[role_of(pid, tid, comm)].append(f"/proc/{pid}/task/{tid}/stat")
    return {role: load.proc_cpu_s(p) for role, p in paths.items()}


def measure(server: load.ServerProcess, call: load.Call, rate: float, seconds: float, pyspy: str,
            workdir: Path) -> dict:
    workers = [p for p in server.pids() if p != server.proc.pid]
    files = [workdir / f"{int(rate)}-{pid}.txt" for pid in workers]
    record = max(1, int(seconds) - 2)
    spies = [subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(record), "--rate", "100",
                               "--format", "raw", "--output", str(f), "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, f in zip(workers, files)]
    client0, server0, roles0 = time.process_time(), server.cpu_s(), role_cpu_s(workers)
    run = load.run(load.open_loop(server.url, call, rate, seconds, seed=int(rate), max_in_flight=1024, raw=True))
    client_s, server_s = time.process_time() - client0, server.cpu_s() - server0
    roles = {role: cpu - roles0[role] for role, cpu in role_cpu_s(workers).items()}
    for spy in spies:
        spy.wait()
    summary = load.summarize(run)
    parts = split([f for f in files if f.exists()])
    return {"rate": rate, "summary": summary, "client_s": client_s, "server_s": server_s,
            "loop_s": roles["event loop"], "roles": roles, "span_s": run.duration_s, "parts": parts,
            "n": len(run.samples)}


def report(info: dict, models_desc: str, a: argparse.Namespace, rows: list[dict]) -> str:
    head = [f"# CPU split under open-loop load: dermagan serve, {a.workers} workers, POST /eczema/add 128x128 (gradient)", ""]
    head += [f"- **{k}**: {v}" for k, v in info.items()]
    head += [f"- **model**: {models_desc}",
             f"- **server**: `dermagan serve --workers {a.workers}`, CPU provider, intra-op threads 1 each, early refusal "
             f"{'on' if a.early_refusal else 'off'}, defaults otherwise (max batch 8, queue size 64), log level warning",
             f"- **load**: bench/load.py open loop (Poisson, raw client) on the same machine, {a.seconds:g} s per rate; "
             "py-spy 100 samples/s of each worker over all but the last 2 s", ""]
    head += ["| offered req/s | 200/s | 503/s | client CPU (cores) | client µs / request | server CPU (cores) | "
             + " | ".join(PARTS) + " |", "|---" * (6 + len(PARTS)) + "|"]
    for r in rows:
        s, span = r["summary"], r["span_s"]
        total = sum(r["parts"].values()) or 1
        served, rejected = s["ok_rps"], s["errors"].get(503, 0) / span
        head.append(f"| {r['rate']:g} | {served:.1f} | {rejected:.1f} | {r['client_s'] / span:.2f} | "
                    f"{1e6 * r['client_s'] / max(1, r['n']):.0f} | {r['server_s'] / span:.2f} | "
                    + " | ".join(f"{100 * r['parts'][p] / total:.1f} %" for p in PARTS) + " |")
    head += ["", "Server CPU by part (cores = share x server CPU / span), and the event-loop threads' CPU measured "
             "exactly (/proc, the workers' main threads) next to the sum of the loop parts:", "",
             "| offered req/s | " + " | ".join(PARTS) + " | loop threads, measured | loop parts, sampled |",
             "|---" * (3 + len(PARTS)) + "|"]
    for r in rows:
        total = sum(r["parts"].values()) or 1
        cores = r["server_s"] / r["span_s"]
        by_part = {p: cores * r["parts"][p] / total for p in PARTS}
        sampled_loop = sum(v for p, v in by_part.items() if p.startswith("loop"))
        head.append(f"| {r['rate']:g} | " + " | ".join(f"{by_part[p]:.3f}" for p in PARTS)
                    + f" | {r['loop_s'] / r['span_s']:.3f} | {sampled_loop:.3f} |")
    head += ["", "Exact CPU by thread role (/proc, the threads' kernel names), in cores and in ms a request "
             "answered 200 (the client's too):", "",
             "| offered req/s | " + " | ".join(ROLES) + " | server, all | client |", "|---" * (3 + len(ROLES)) + "|"]
    for r in rows:
        span, answered = r["span_s"], max(1.0, r["summary"]["ok_rps"] * r["span_s"])
        cells = [f"{r['roles'][role] / span:.3f} / {1e3 * r['roles'][role] / answered:.2f} ms" for role in ROLES]
        head.append(f"| {r['rate']:g} | " + " | ".join(cells) + f" | {r['server_s'] / span:.3f} / "
                    f"{1e3 * r['server_s'] / answered:.2f} ms | {r['client_s'] / span:.3f} / "
                    f"{1e3 * r['client_s'] / answered:.2f} ms |")
    return "\n".join(head) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rates", default="900,2300", help="offered req/s, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--early-refusal", type=int, choices=(0, 1), default=1, help="DERMAGAN_EARLY_REFUSAL (1 = the default)")
    p.add_argument("--out")
    a = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        p.error("py-spy not found: pip install py-spy")
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    image, mask = sample_request(128, "gradient")
    call = load.edit_call("/eczema/add", image, mask)
    add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
    server = load.dermagan_server(str(models_dir), load.free_port(), models=add, providers="CPUExecutionProvider",
                                  workers=a.workers, intra_op_threads=1, early_refusal=bool(a.early_refusal),
                                  log_level="warning").start()
    rows = []
    try:
        load.run(load.closed_loop(server.url, call, 16, 3, raw=True))  # warm-up
        with tempfile.TemporaryDirectory() as tmp:
            for rate in (float(x) for x in a.rates.split(",")):
                rows.append(measure(server, call, rate, a.seconds, pyspy, Path(tmp)))
                print(f"{rate:g}/s done", flush=True)
    finally:
        server.stop()
    load.publish(report(info, models_desc, a, rows), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
