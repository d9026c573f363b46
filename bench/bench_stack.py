"""The HTTP stack under `dermagan serve`: uvicorn on asyncio + h11 vs on uvloop + httptools.

uvicorn's "auto" runs on uvloop and httptools only where they are installed; the serve extras list
both (pyproject.toml), and without them uvicorn falls back to the standard asyncio loop and the
pure-Python h11 parser. This measures what that choice costs, one server of each on loopback, in one
run, rounds alternating (the server not measured is SIGSTOPped):

- POST /eczema/add (image + mask) closed loop at c = 1 and c = 16: 200s/s, p99, server CPU a request;
- the same at c = 32 against `DERMAGAN_MAX_INFLIGHT=1`, where nearly every answer is a 503
  `queue_full`: the CPU a rejection costs, which is what an overload spends on the requests it turns away.

The asyncio + h11 server is `dermagan serve` with `uvloop` and `httptools` made unimportable
(sys.modules entries set to None), so both run the same code from the same environment.

    .venv/bin/python bench/bench_stack.py --out bench/results/stack-$(date +%F).md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(HERE.parent / "tests" / "service")]

import load  # noqa: E402
from bench_peers import models_folder, sample_request  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402

STACKS = ("asyncio + h11", "uvloop + httptools")
BLOCK = "sys.modules['uvloop'] = None; sys.modules['httptools'] = None; "


def server(stack: str, models_dir: Path, model: str, **env: str) -> load.ServerProcess:
    port = load.free_port()
    args = ["serve", "--models-dir", str(models_dir), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    code = "import sys; " + (BLOCK if stack == STACKS[0] else "") + f"from dermagan.cli import main; sys.exit(main({args!r}))"
    env = {"DERMAGAN_MODELS": model, "DERMAGAN_PROVIDERS": "CPUExecutionProvider", **env}
    return load.ServerProcess(stack.replace(" + ", "-"), [sys.executable, "-c", code], port, env=env)


def measure(s: load.ServerProcess, call: load.Call, c: int, seconds: float) -> dict:
    load.run(load.closed_loop(s.url, call, c, 1.0, raw=True))  # warm the connections
    cpu0 = s.cpu_s()
    run = load.run(load.closed_loop(s.url, call, c, seconds, raw=True))
    cpu = s.cpu_s() - cpu0
    r = load.summarize(run)
    return {**r, "cpu_ms": 1e3 * cpu / max(1, r["n"]), "n503": r["errors"].get(503, 0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="per cell and round")
    p.add_argument("--out")
    a = p.parse_args()
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    image, mask = sample_request(128)
    call = load.edit_call("/eczema/add", image, mask)
    add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
    cells = [("served", 1), ("served", 16), ("rejected", 32)]
    servers = {(stack, kind): server(stack, models_dir, add, **({"DERMAGAN_MAX_INFLIGHT": "1"} if kind == "rejected" else {}))
               for stack in STACKS for kind in ("served", "rejected")}
    results: dict[tuple[str, str, int], list[dict]] = {}
    try:
        for s in servers.values():
            s.start()
            s.pause()
        for rnd in range(a.rounds):
            for stack in (STACKS if rnd % 2 == 0 else STACKS[::-1]):
                for kind, c in cells:
                    s = servers[stack, kind]
                    s.resume()
                    results.setdefault((stack, kind, c), []).append(measure(s, call, c, a.seconds))
                    s.pause()
                    print(stack, kind, c, f"{results[stack, kind, c][-1]['cpu_ms']:.3f} ms CPU/request", flush=True)
    finally:
        for s in servers.values():
            s.stop()

    def med(stack: str, kind: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[stack, kind, c])

    lines = ["# HTTP stack under `dermagan serve`: asyncio + h11 vs uvloop + httptools", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **model**: {models_desc}, task add (`{add}`), CPU provider, one worker process, defaults otherwise",
              "- **client**: bench/load.py closed loop, raw asyncio client, same machine; "
              f"{a.seconds:g} s per cell after 1 s of warm-up, {a.rounds} rounds alternating (the idle server SIGSTOPped); "
              "medians of the rounds", "",
              "| stack | cell | 200/s | 503/s | p99 ms (200s) | server CPU ms / request | rounds (CPU ms / request) |",
              "|---|---|---|---|---|---|---|"]
    for kind, c in cells:
        for stack in STACKS:
            rs = results[stack, kind, c]
            cell = f"c={c}" + (", DERMAGAN_MAX_INFLIGHT=1 (503s)" if kind == "rejected" else "")
            lines.append(f"| {stack} | {cell} | {med(stack, kind, c, 'ok_rps'):.1f} | "
                         f"{statistics.median(r['n503'] / (r['n'] / r['rps']) for r in rs):.0f} | "
                         f"{med(stack, kind, c, 'p99_ms'):.1f} | {med(stack, kind, c, 'cpu_ms'):.3f} | "
                         + ", ".join(f"{r['cpu_ms']:.3f}" for r in rs) + " |")
    lines += ["", "Ratios, asyncio + h11 / uvloop + httptools (server CPU per request):"]
    for kind, c in cells:
        lines.append(f"- {kind} at c={c}: {med(STACKS[0], kind, c, 'cpu_ms') / med(STACKS[1], kind, c, 'cpu_ms'):.2f}x")
    text = "\n".join(lines) + "\n"
    load.publish(text, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
