"""Soak: `dermagan serve` at 70 % of its saturation rate for 10 minutes (issue 7).

Open-loop Poisson traffic on POST /eczema/add (128x128 image + mask); saturation is measured first
(best closed loop at c = 16, 32) unless `--saturation` is given. Reported: errors by status (the
target is zero), req/s and p50/p99/p99.9 per minute and overall, RSS sampled every 2 s with its
least-squares slope in MiB/min (after the first minute, when allocator pools have filled), and the
server's CPU time. `--minutes` shortens (or lengthens) the run.

    .venv/bin/python bench/bench_soak.py --out bench/results/soak-$(date +%F).md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(HERE.parent / "tests" / "service")]

import load  # noqa: E402
from bench_peers import IMAGES, models_folder, sample_request  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--workers", type=int, default=1, help="dermagan serve --workers (intra-op threads are --threads / workers each)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.7, help="of the saturation rate")
    p.add_argument("--saturation", type=float, default=0.0, help="req/s; 0 = measure it first")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="see bench/load.py")
    p.add_argument("--image", choices=IMAGES, default="gradient", help="what is uploaded (bench_peers.sample_request)")
    p.add_argument("--out")
    a = p.parse_args()
    raw = a.client == "raw"
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    image, mask = sample_request(a.size, a.image)
    call = load.edit_call("/eczema/add", image, mask)
    add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
    server = load.dermagan_server(str(models_dir), load.free_port(), models=add, providers="CPUExecutionProvider",
                                  workers=a.workers, intra_op_threads=max(1, a.threads // a.workers), log_level="warning").start()
    try:
        load.run(load.closed_loop(server.url, call, 8, 3, raw=raw))
        sat = a.saturation or load.saturation(server, call, 10, raw=raw)
        rate = a.fraction * sat
        seconds = 60 * a.minutes
        print(f"saturation {sat:.1f} req/s; soaking at {rate:.1f} req/s for {seconds:.0f} s", flush=True)
        cpu0 = server.cpu_s()
        with load.RssSampler(server, 2.0) as rss:
            run = load.run(load.open_loop(server.url, call, rate, seconds, seed=1, raw=raw))
        cpu = server.cpu_s() - cpu0
        after = load.summarize(load.run(load.closed_loop(server.url, call, 1, 3, raw=raw)))  # still serving?
    finally:
        status = server.stop()
    total = load.summarize(run)
    minutes = [load.summarize(run, since_s=60 * m, until_s=min(60 * (m + 1), seconds)) for m in range(int(-(-seconds // 60)))]
    slope = rss.slope_mb_per_min(skip_s=min(60.0, seconds / 4))
    rss_first, rss_last = rss.samples[0][1], rss.samples[-1][1]
    lines = [f"# Soak: dermagan serve at {100 * a.fraction:.0f} % of saturation for {a.minutes:g} min, "
             f"POST /eczema/add {a.size}x{a.size} image + mask ({a.image})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **model**: {models_desc}",
              f"- **server**: `dermagan serve`, {a.workers} worker process{'es' if a.workers > 1 else ''}, CPU provider, intra-op threads {max(1, a.threads // a.workers)} each, defaults otherwise "
              f"(max batch 8, max delay 2 ms, queue 64, request timeout 30 s), log level warning",
              f"- **client**: bench/load.py open loop (Poisson, {a.client} client), same machine",
              f"- **saturation**: {sat:.1f} req/s ({'given' if a.saturation else 'best closed loop at c=16, 32'}); "
              f"offered {rate:.1f} req/s", "",
              "| | value |", "|---|---|",
              f"| requests | {total['n']} |",
              f"| errors by status | {load.fmt_errors(total['errors'])} (client-side: {dict(run.errors) or 'none'}; "
              f"not sent, over the in-flight cap: {run.client_dropped}) |",
              f"| req/s (200) | {total['ok_rps']:.1f} |",
              f"| p50 / p99 / p99.9 / max ms | {total['p50_ms']:.1f} / {total['p99_ms']:.1f} / {total['p999_ms']:.1f} / "
              f"{total['max_ms']:.1f} |",
              f"| RSS first -> last sample | {rss_first:.1f} -> {rss_last:.1f} MiB (peak {max(m for _, m in rss.samples):.1f}) |",
              f"| RSS slope after the first minute | **{slope:+.3f} MiB/min** |",
              f"| server CPU | {cpu:.0f} s ({cpu / seconds:.2f} cores) |",
              f"| after the soak (closed loop c=1, 3 s) | {after['ok_rps']:.1f} req/s, p50 {after['p50_ms']:.1f} ms, "
              f"errors {load.fmt_errors(after['errors'])} |",
              f"| exit status on SIGTERM | {status} |", "",
              "| minute | req/s (200) | p50 ms | p99 ms | p99.9 ms | errors |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(minutes):
        lines.append(f"| {i + 1} | {m['ok_rps']:.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['p999_ms']:.1f} | "
                     f"{load.fmt_errors(m['errors'])} |")
    ok = not total["errors"] and not run.errors and not run.client_dropped
    lines += ["", f"Target zero errors: {'met' if ok else '**NOT met**'}. RSS (MiB) every 2 s: "
              + ", ".join(f"{m:.0f}" for _, m in rss.samples[:: max(1, len(rss.samples) // 60)])]
    text = "\n".join(lines) + "\n"
    load.publish(text, a.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
