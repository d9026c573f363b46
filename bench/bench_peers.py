"""dermagan's service vs LitServe (batching on) vs a plain FastAPI endpoint, side by side (issue 7).

Same ONNX file (the manifest's `add` model: the shipped models/ if present, else the service's
fixture models), same pre/post-processing (the service's own `pipeline` functions, see
bench/peers/masked_edit.py), same ONNX Runtime session options (the service's `Engine`: intra-op
threads `--threads`, inter-op 1, sequential), same client (bench/load.py), same machine, same run.
All three run for the whole benchmark, but only the one being measured is not SIGSTOPped (LitServe's
idle worker polls its queue and would tax the others), and the cells are interleaved over rounds.

Per server: closed loop at concurrency 1, 4, 16, 64, then an open-loop Poisson client at one rate
for all three (`--rate`, default 70 % of the lowest saturation measured). Reported: req/s (200s),
p50/p99/p99.9 of the 200s, mean batch size (from /metrics), errors by status, server CPU seconds.
Also the in-process ceiling: raw ONNX Runtime images/s at batch 1..max on pre-decoded tensors
(`R_ort(b)`), codec images/s (decode + pre + post + PNG, one thread: `R_codec`) and
min(R_ort best, R_codec) (issue 4's ceiling) plus the serial bound 1 / (1/R_ort + 1/R_codec), and the
whole path measured without HTTP (`pipeline_rate`: one process per core, decode + batched ORT +
composite + PNG in a loop) -- what the two halves give when they share the cores. The ceiling is measured
before the servers start and again after they stop; the ratios use the higher of the two (this box's cores change
speed by up to ~1.7x within a day, sometimes within minutes), and a report whose two measurements differ by more
than 15 % says so.

`dermagan-2w` is the shipped `dermagan serve --workers 2`: two worker processes on one port (one
batcher each, intra-op threads `--threads` / 2 each), `/metrics` summed over both -- what a user runs
on a CPU host, against LitServe's two processes.

    .venv/bin/python bench/bench_peers.py --out bench/results/peers-$(date +%F).md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(REPO / "tests" / "service")]

import load  # noqa: E402
import masked_edit  # noqa: E402

SERVERS = ("dermagan", "dermagan-2w", "litserve", "fastapi")
CLIENT = ["raw"]  # --client: raw, httpx, or h2load (its closed-loop cells; the rest on the raw client)


def _raw() -> bool:
    """bench/load.py's raw asyncio HTTP/1.1 client (raw, h2load) rather than httpx."""
    return CLIENT[0] != "httpx"


def models_folder(arg: str | None) -> tuple[Path, str]:
    """(folder, description): --models-dir, else the shipped models/, else fresh fixture models."""
    if arg:
        return Path(arg), f"{arg} (given)"
    shipped = REPO / "models"
    if (shipped / "manifest.json").exists():
        return shipped, "the shipped models/ (trained)"
    from fixture_models import build_models

    folder = Path(tempfile.mkdtemp(prefix="dermagan-bench-models-"))
    build_models(folder)
    return folder, "the service's fixture models (tests/service/fixture_models.py: random weights, 2 convs)"


IMAGES = ("gradient", "photo")


def sample_request(size: int, image: str = "gradient") -> tuple[bytes, bytes]:
    """(image PNG, mask PNG), size x size. gradient: a smooth gradient with a mask box over its middle
    ninth (cheap to encode: PNG's row filters turn it into runs). photo: a procedural grade-2 eczema
    photograph on medium skin with its own eczema mask (SYNTHETIC_DATA.md), which costs a skin
    photo's PNG decode and encode."""
    from sample_images import encode, gradient, mask_png, rect_mask

    if image == "photo":
        from dermagan.training.synth import render

        sample = render("eczema", 2, size, grade=2, ita_category="intermediate")
        assert sample.mask is not None
        return encode(sample.image), mask_png(sample.mask >= 128)
    q = size // 3
    return encode(gradient(size, size)), mask_png(rect_mask(size, size, (q, q, 2 * q, 2 * q)))


# ---- the ceiling: in-process, no HTTP --------------------------------------------------------

def rate(fn, min_s: float = 1.5, min_n: int = 20) -> float:
    """Calls per second of fn() (median of 3 timed blocks)."""
    fn()
    per = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while n < min_n or time.perf_counter() - t0 < min_s / 3:
            fn()
            n += 1
        per.append(n / (time.perf_counter() - t0))
    return float(np.median(per))


def ceiling(models_dir: Path, threads: int, max_batch: int, image: bytes, mask: bytes) -> dict[str, object]:
    engine = masked_edit.load_add_model(models_dir, threads, max_batch)
    edit = masked_edit.plan(engine, image, mask)
    r_ort = {}
    for b in range(1, max_batch + 1):
        feeds = masked_edit.stack([edit] * b)
        r_ort[b] = b * rate(lambda: engine.run(feeds))
    row = engine.run(edit.inputs)["image"][0]
    r_codec = rate(lambda: masked_edit.finish(masked_edit.plan(engine, image, mask), row))
    r_plan = rate(lambda: masked_edit.plan(engine, image, mask))
    best_b = max(r_ort, key=r_ort.get)
    best = r_ort[best_b]
    procs = len(os.sched_getaffinity(0))
    r_pipe = {b: pipeline_rate(models_dir, procs, b, image, mask) for b in (1, 4)}
    return {"r_ort": r_ort, "best_b": best_b, "r_codec": r_codec, "r_plan": r_plan,
            "min": min(best, r_codec), "serial": 1 / (1 / best + 1 / r_codec),
            "single_ms": 1e3 / r_ort[1], "codec_ms": 1e3 / r_codec, "pipeline": r_pipe, "pipeline_procs": procs}


def either_ceiling(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """Of the ceilings measured before and after the servers ran, the higher (a ratio against it never flatters),
    with both measurements' `min` and, where they differ by more than load.drift's limit, their spread as `drift`."""
    mins = [float(before["min"]), float(after["min"])]  # type: ignore[arg-type]
    chosen = before if mins[0] >= mins[1] else after
    return {**chosen, "measured": {"before": before, "after": after}, "mins": mins,
            "chosen": "before" if chosen is before else "after", "drift": load.drift(mins)}


def _pipeline_worker(models_dir: Path, batch: int, image: bytes, mask: bytes, start, seconds: float, out) -> None:
    engine = masked_edit.load_add_model(models_dir, 1, batch)
    n = 0
    start.wait()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        edits = [masked_edit.plan(engine, image, mask) for _ in range(batch)]
        rows = engine.run(masked_edit.stack(edits))["image"]
        for e, row in zip(edits, rows):
            masked_edit.finish(e, row)
        n += batch
    out.put(n)


def pipeline_rate(models_dir: Path, procs: int, batch: int, image: bytes, mask: bytes, seconds: float = 4.0) -> float:
    """Images/s of the whole request path without HTTP: `procs` processes (one ORT thread each), each
    decoding `batch` uploads, running them as one batch and compositing + encoding them, in a loop.
    What ONNX Runtime and the codec give together on these cores, sharing them as a server must."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [ctx.Process(target=_pipeline_worker, args=(models_dir, batch, image, mask, start, seconds, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    start.wait()
    total = sum(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


# ---- servers ---------------------------------------------------------------------------------

def make_server(name: str, models_dir: Path, a: argparse.Namespace) -> load.ServerProcess:
    port = load.free_port()
    if name.startswith("dermagan"):
        from dermagan.manifest import load_manifest

        add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
        settings = dict(models=add, providers="CPUExecutionProvider", intra_op_threads=a.threads,
                        max_batch=a.max_batch, max_delay_ms=a.max_delay_ms, log_level="warning")
        if name == "dermagan-2w":  # the shipped multi-process mode: `dermagan serve --workers 2`
            settings.update(workers=2, intra_op_threads=max(1, a.threads // 2))
        server = load.dermagan_server(str(models_dir), port, **settings)
        server.name = name
        return server
    script = HERE / "peers" / f"{name}_server.py"
    argv = [sys.executable, str(script), "--models-dir", str(models_dir), "--port", str(port), "--threads", str(a.threads)]
    if name == "litserve":
        argv += ["--max-batch", str(a.max_batch), "--batch-timeout-ms", str(a.max_delay_ms)]
    return load.ServerProcess(name, argv, port)


def measure(server: load.ServerProcess, call: load.Call, kind: str, level: float, duration_s: float) -> dict[str, object]:
    """One cell on one (resumed) server: the run plus its batch and CPU counters."""
    before, cpu0, la0 = load.batch_stats(server.url), server.cpu_s(), os.getloadavg()[0]
    if kind == "closed" and CLIENT[0] == "h2load":
        run = load.run(load.h2load_closed_loop(server.url, call, int(level), duration_s))
    elif kind == "closed":
        run = load.run(load.closed_loop(server.url, call, int(level), duration_s, raw=_raw()))
    else:
        run = load.run(load.open_loop(server.url, call, level, duration_s, seed=int(time.time()), raw=_raw()))
    after = load.batch_stats(server.url)
    return {"run": run, "rows": after[0] - before[0], "batches": after[1] - before[1],
            "cpu_s": server.cpu_s() - cpu0, "load1": (la0 + os.getloadavg()[0]) / 2}


def combine(name: str, kind: str, level: float, parts: list[dict]) -> dict[str, object]:
    """The rounds of one (server, cell), pooled; `rps_range` shows the spread between rounds."""
    out = load.summarize(load.merge([p["run"] for p in parts]))
    per_round = [load.summarize(p["run"])["ok_rps"] for p in parts]
    batches = sum(p["batches"] for p in parts)
    out.update(server=name, kind=kind, level=level, rps_range=(min(per_round), max(per_round)),
               mean_batch=sum(p["rows"] for p in parts) / batches if batches else float("nan"),
               cpu_s=sum(p["cpu_s"] for p in parts), load1=sum(p["load1"] for p in parts) / len(parts))
    print(f"  {name:9s} {kind:6s} {level:7.1f}: {out['ok_rps']:7.1f} req/s ({min(per_round):.0f}-{max(per_round):.0f})  "
          f"p50 {out['p50_ms']:7.1f}  p99 {out['p99_ms']:7.1f}  p99.9 {out['p999_ms']:7.1f} ms  "
          f"batch {out['mean_batch']:.2f}  errors {load.fmt_errors(out['errors'])}", flush=True)
    return out


def interleaved(servers: dict[str, load.ServerProcess], call: load.Call, cells: list[tuple[str, float]],
                a: argparse.Namespace) -> list[dict]:
    """Every cell on every server, `a.rounds` times, the server order rotating each round.

    Only the measured server runs; the others are SIGSTOPped, so on a shared machine the noise of
    the other tenants falls on all three alike instead of on whichever ran last.
    """
    names = list(servers)
    parts: dict[tuple[str, int], list[dict]] = {}
    for r in range(a.rounds):
        for i, (kind, level) in enumerate(cells):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                s = servers[name]
                s.resume()
                try:
                    load.run(load.closed_loop(s.url, call, max(1, min(int(level), 16)), a.warmup, raw=_raw()))
                    parts.setdefault((name, i), []).append(measure(s, call, kind, level, a.duration))
                finally:
                    s.pause()
    return [combine(name, kind, level, parts[(name, i)]) for i, (kind, level) in enumerate(cells) for name in names]


# ---- report ----------------------------------------------------------------------------------

def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def targets(rows: list[dict], ceil: dict) -> list[str]:
    """The issue's targets, one line each, from the closed-loop cells: each server's saturation is its best cell.
    Against LitServe the target is 1.2x its throughput *at equal or lower p99*: the best of our cells whose p99 is
    no higher than LitServe's at its saturation, against that saturation (and, for reference, saturation
    against saturation, whatever the p99s)."""
    lines = []
    closed = [r for r in rows if r["kind"] == "closed"]
    best = {s: max((r for r in closed if r["server"] == s), key=lambda r: r["ok_rps"])
            for s in dict.fromkeys(r["server"] for r in closed)}
    for ours in ("dermagan", "dermagan-2w"):
        d = best.get(ours)
        if not d:
            continue
        for peer, factor in (("litserve", 1.2), ("fastapi", 1.5)):
            if peer in best:
                p = best[peer]
                ratio = d["ok_rps"] / p["ok_rps"]
                verdict = f"target >= {factor}x: {'met' if ratio >= factor else 'NOT met'}"
                if peer == "litserve":
                    verdict = "for reference; the target counts at equal or lower p99, next line"
                lines.append(f"- {ours} / {peer} saturation throughput: {d['ok_rps']:.1f} / {p['ok_rps']:.1f} = "
                             f"**{ratio:.2f}x** ({verdict}); p99 at those points {d['p99_ms']:.1f} vs {p['p99_ms']:.1f} ms")
                if peer == "litserve":
                    under = [r for r in closed if r["server"] == ours and r["p99_ms"] <= p["p99_ms"]]
                    if under:
                        u = max(under, key=lambda r: r["ok_rps"])
                        ratio = u["ok_rps"] / p["ok_rps"]
                        lines.append(f"- {ours} / {peer} at equal or lower p99: {ours}'s best cell with p99 <= "
                                     f"{p['p99_ms']:.1f} ms (litserve's at its saturation, c={int(p['level'])}) is "
                                     f"c={int(u['level'])}, {u['ok_rps']:.1f} req/s at p99 {u['p99_ms']:.1f} ms: "
                                     f"**{ratio:.2f}x** (target >= {factor}x: {'met' if ratio >= factor else 'NOT met'})")
                    else:
                        lines.append(f"- {ours} / {peer} at equal or lower p99: no {ours} cell has p99 <= "
                                     f"{p['p99_ms']:.1f} ms (target >= {factor}x: NOT met)")
        ratio = d["ok_rps"] / ceil["min"]
        pipe = max(ceil["pipeline"].values())
        lines.append(f"- {ours} / ceiling: {d['ok_rps']:.1f} / {ceil['min']:.0f} = **{ratio:.2f}x** "
                     f"(target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}); against the serial bound "
                     f"{d['ok_rps'] / ceil['serial']:.2f}x; against the measured no-HTTP pipeline "
                     f"({pipe:.0f}/s) {d['ok_rps'] / pipe:.2f}x")
    return lines


def report(a: argparse.Namespace, info: dict, models_desc: str, size: int, ceil: dict, rows: list[dict]) -> str:
    lines = [f"# Peers: dermagan vs LitServe vs plain FastAPI, POST /eczema/add, {size}x{size} image + mask ({a.image})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **model**: {models_desc}",
              f"- **settings (all three)**: ORT CPUExecutionProvider, intra-op threads {a.threads}, inter-op 1, "
              f"sequential, ORT_ENABLE_ALL (the service's `Engine`); max batch {a.max_batch}; batching delay "
              f"{a.max_delay_ms} ms (dermagan `max_delay_ms`, LitServe `batch_timeout`); uvicorn with its defaults "
              f"(uvloop + httptools installed), log level warning",
              "- **processes**: dermagan 1 (event loop + codec threadpool + 1 inference thread); dermagan-2w "
              "(`dermagan serve --workers 2`) a supervisor + 2 such workers with half the intra-op threads each; plain FastAPI 1 "
              "(sync endpoint in the threadpool); LitServe 1 API server + 1 spawned inference worker + its "
              "multiprocessing manager (its minimum)",
              "- **client**: "
              + ("closed-loop cells: h2load (nghttp2, HTTP/1.1 keep-alive, one connection per unit of concurrency, "
                 "latency from send to the end of the answer); open-loop cell: " if CLIENT[0] == "h2load" else "")
              + f"bench/load.py ({'raw asyncio HTTP/1.1 keep-alive' if _raw() else 'asyncio httpx'}, one "
              f"pre-encoded multipart body) on the same machine; "
              f"{a.duration:g} s per cell and round after {a.warmup:g} s of warm-up load, {a.rounds} rounds interleaved "
              f"(server order rotating; the servers not measured are SIGSTOPped), samples pooled; req/s range = "
              f"lowest-highest round",
              ""]
    measured = ceil.get("measured", {"once": ceil})
    lines += ["## Ceiling (in process, no HTTP)", ""]
    if "mins" in ceil:
        lines += [f"Measured before the servers started and after they stopped: min() ceiling {ceil['mins'][0]:.0f} and "
                  f"{ceil['mins'][1]:.0f} req/s; the ratios below use the {ceil['chosen']} one (the higher), whose "
                  "figures follow."
                  + ("" if ceil["drift"] is None else f" **The box changed speed during this run** (the two "
                     f"{100 * ceil['drift']:.0f} % apart): ratios against the ceiling here compare with its faster state."), ""]
    lines += ["| batch | " + " | ".join(str(b) for b in ceil["r_ort"]) + " |",
              "|---|" + "---|" * len(ceil["r_ort"])]
    lines += [f"| R_ort images/s{'' if when == 'once' else ' (' + when + ')'} | "
              + " | ".join(fmt(v, 0) for v in m["r_ort"].values()) + " |" for when, m in measured.items()]
    lines += ["",
              f"R_codec (decode + pre + post + PNG, one thread) {ceil['r_codec']:.0f} images/s "
              f"({ceil['codec_ms']:.2f} ms; decode + pre alone {1e3 / ceil['r_plan']:.2f} ms); raw single-image "
              f"inference {ceil['single_ms']:.2f} ms. Ceiling min(R_ort best (b={ceil['best_b']}), R_codec) = "
              f"**{ceil['min']:.0f} req/s**; serial bound 1/(1/R_ort + 1/R_codec) = {ceil['serial']:.0f} req/s.", "",
              f"Measured, no HTTP: the whole request path (decode, batched ORT, composite, PNG) in "
              f"{ceil['pipeline_procs']} processes of one ORT thread each, no client on the machine: "
              + ", ".join(f"batch {b}: {v:.0f} images/s" for b, v in ceil["pipeline"].items())
              + ". The min() ceiling counts ORT on all cores and the codec on one thread, each at full speed at "
              "once; this runs both halves in every process, sharing the cores as a server must (the servers "
              "below also share them with the client).", ""]
    lines += ["## End to end", "",
              "| server | load | req/s (200) | req/s range | p50 ms | p99 ms | p99.9 ms | mean batch | errors by status | server CPU s | load avg |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load_desc = f"closed c={int(r['level'])}" if r["kind"] == "closed" else f"Poisson {r['level']:.0f}/s"
        lines.append(f"| {r['server']} | {load_desc} | {fmt(r['ok_rps'])} | {r['rps_range'][0]:.0f}-{r['rps_range'][1]:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
                     f"{fmt(r['p999_ms'])} | {fmt(r['mean_batch'], 2)} | {load.fmt_errors(r['errors'])} | "
                     f"{fmt(r['cpu_s'])} | {fmt(r['load1'], 1)} |")
    names = list(dict.fromkeys(r["server"] for r in rows))
    lines += ["", "## Targets", "", *targets(rows, ceil)]
    lines += ["", "Server CPU per request (ms, all closed-loop cells): " + ", ".join(
        f"{s} {1e3 * sum(r['cpu_s'] for r in rows if r['server'] == s and r['kind'] == 'closed') / max(1, sum(r['ok_rps'] * a.duration * a.rounds for r in rows if r['server'] == s and r['kind'] == 'closed')):.2f}"
        for s in names)]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (the mask covers its middle ninth)")
    p.add_argument("--image", choices=IMAGES, default="gradient", help="what is uploaded (see sample_request)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="ORT intra-op threads, all servers")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--rate", type=float, default=0.0, help="open-loop req/s (0: 70%% of the lowest saturation)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (pooled in the report)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured cell")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"of {SERVERS + ('dermagan-2w',)}")
    p.add_argument("--client", choices=["raw", "httpx", "h2load"], default="raw",
                   help="raw: asyncio protocols, ~0.13 ms CPU a request; httpx: ~2-3 ms, as much as a server's request; "
                        "h2load: the closed-loop cells from nghttp2's h2load (~35 µs; the open-loop cell stays raw)")
    p.add_argument("--out", help="write the Markdown report here too")
    a = p.parse_args()
    CLIENT[0] = a.client
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    image, mask = sample_request(a.size, a.image)
    call = load.edit_call("/eczema/add", image, mask)
    def measure_ceiling() -> dict[str, object]:
        print("ceiling ...", flush=True)
        c = ceiling(models_dir, a.threads, a.max_batch, image, mask)
        print(f"  R_ort { {b: round(v) for b, v in c['r_ort'].items()}}  R_codec {c['r_codec']:.0f}  "
              f"min {c['min']:.0f}  serial {c['serial']:.0f}", flush=True)
        return c

    print(f"models: {models_desc}", flush=True)
    before = measure_ceiling()
    names = [s.strip() for s in a.servers.split(",") if s.strip()]
    servers: dict[str, load.ServerProcess] = {}
    try:
        for name in names:
            servers[name] = make_server(name, models_dir, a).start()
            load.run(load.closed_loop(servers[name].url, call, 4, 2.0, raw=_raw()))  # first requests: lazy paths
            servers[name].pause()
        closed = [("closed", float(c)) for c in a.concurrency.split(",")]
        rows = interleaved(servers, call, closed, a)
        rate_ = a.rate or 0.7 * min(max(r["ok_rps"] for r in rows if r["server"] == s) for s in names)
        rows += interleaved(servers, call, [("open", rate_)], a)
    finally:
        for s in servers.values():
            s.stop()
    ceil = either_ceiling(before, measure_ceiling())
    text = report(a, info, models_desc, a.size, ceil, rows)
    load.publish(text, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
