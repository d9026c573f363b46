"""A model reload under load: SIGHUP to `dermagan serve` while open-loop traffic runs.

Poisson traffic on POST /eczema/add (128x128 image + mask) at `--fraction` of the saturation rate
(measured first, best closed loop at c = 16, 32) for `--seconds`; SIGHUP at `--hup-at` seconds, which
reopens and warms every served model (all of the folder's, `--models` to choose) beside the serving ones
and swaps them in. Reported: errors by status (the target is zero: nothing refused on the way), req/s and
p50 / p99 per second, the reload's own time from the server's log, and the server's RSS before, at the
peak (both sets of models held) and after.

    .venv/bin/python bench/bench_reload.py --out bench/results/reload-$(date +%F).md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(HERE.parent / "tests" / "service")]

import load  # noqa: E402
from bench_peers import models_folder, sample_request  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--models", default="", help="comma-separated names to serve (default: every model of the folder)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--hup-at", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.5, help="of the saturation rate")
    p.add_argument("--rate", type=float, default=0.0, help="req/s instead of --fraction of a measured saturation")
    p.add_argument("--out")
    a = p.parse_args(argv)
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    names = [n for n in a.models.split(",") if n] or [m.name for m in load_manifest(models_dir).models]
    image, mask = sample_request(128, "gradient")
    call = load.edit_call("/eczema/add", image, mask)
    cores = len(os.sched_getaffinity(0))
    server = load.dermagan_server(str(models_dir), load.free_port(), models=names, providers="CPUExecutionProvider",
                                  workers=a.workers, intra_op_threads=max(1, cores // a.workers),
                                  log_level="info", access_log="false").start()
    try:
        load.run(load.closed_loop(server.url, call, 8, 3, raw=True))
        sat = 0.0 if a.rate else load.saturation(server, call, 10, raw=True)
        rate = a.rate or a.fraction * sat
        print(f"{rate:.1f} req/s for {a.seconds:g} s, SIGHUP at {a.hup_at:g} s", flush=True)

        async def with_hup() -> load.Run:
            asyncio.get_running_loop().call_later(a.hup_at, os.kill, server.proc.pid, signal.SIGHUP)
            return await load.open_loop(server.url, call, rate, a.seconds, seed=1, raw=True)

        with load.RssSampler(server, 0.5) as rss:
            run = load.run(with_hup())
    finally:
        status = server.stop()
    log = Path(server.log_path).read_text(errors="replace")
    took = [float(t) for t in re.findall(r"reloaded in ([\d.]+) s", log)]
    refused = re.findall(r"reload refused.*", log)
    total = load.summarize(run)
    before = load.summarize(run, until_s=a.hup_at)
    offered = f"{rate:g} req/s" if a.rate else f"{100 * a.fraction:.0f} % of saturation"
    lines = [f"# A model reload (SIGHUP) under load: POST /eczema/add 128x128 at {offered}, {len(names)} models reloaded", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **model**: {models_desc}; served and reloaded: {', '.join(names)}",
              f"- **server**: `dermagan serve`, {a.workers} worker process{'es' if a.workers > 1 else ''}, CPU provider, "
              f"intra-op threads {max(1, cores // a.workers)} each, defaults otherwise",
              "- **client**: bench/load.py open loop (Poisson, raw client), same machine",
              f"- **saturation**: {f'{sat:.1f} req/s (best closed loop at c=16, 32)' if sat else 'not measured'}; "
              f"offered {rate:.1f} req/s",
              f"- **SIGHUP** at {a.hup_at:g} s; the reload took {', '.join(f'{t:.1f} s' for t in took) or 'NO reload logged'}"
              f" (opening and warming {len(names)} models on the same cores that serve){'; REFUSED: ' + refused[0] if refused else ''}",
              "",
              "| | value |", "|---|---|",
              f"| requests | {total['n']} |",
              f"| errors by status | {load.fmt_errors(total['errors'])} (client-side: {dict(run.errors) or 'none'}) |",
              f"| p50 / p99 ms before the SIGHUP | {before['p50_ms']:.1f} / {before['p99_ms']:.1f} |",
              f"| p50 / p99 / max ms, whole run | {total['p50_ms']:.1f} / {total['p99_ms']:.1f} / {total['max_ms']:.1f} |",
              f"| RSS before -> peak -> last | {rss.samples[0][1]:.0f} -> {max(m for _, m in rss.samples):.0f} -> "
              f"{rss.samples[-1][1]:.0f} MiB (the replaced models are let go DERMAGAN_REQUEST_TIMEOUT_S + 1 s after the swap) |",
              f"| exit status on SIGTERM | {status} |", "",
              "| second | req/s (200) | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
    for i in range(int(run.duration_s)):
        m = load.summarize(run, since_s=i, until_s=i + 1)
        mark = " (SIGHUP)" if i == int(a.hup_at) else ""
        lines.append(f"| {i}{mark} | {m['ok_rps']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {load.fmt_errors(m['errors'])} |")
    ok = bool(took) and not refused and not total["errors"] and not run.errors
    lines += ["", f"Target (nothing refused, the reload done): {'met' if ok else '**NOT met**'}."]
    load.publish("\n".join(lines) + "\n", a.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
