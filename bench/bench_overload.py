"""Overload: open-loop surges at 2x and 5x the saturation rate against `dermagan serve` (issue 7).

For each surge factor, one continuous Poisson schedule: baseline (50 % of saturation) -> surge
(factor x saturation, `--surge-seconds`, 60 by default) -> recovery (50 % again). Checked against
the issue's targets:

- goodput during the surge >= 90 % of the saturation throughput;
- every rejection is a 503 with Retry-After, answered with p99 <= 20 ms; zero 500s;
- accepted requests' p99 within the queue deadline (DERMAGAN_REQUEST_TIMEOUT_S);
- RSS growth <= 10 % (peak during surge and recovery vs the baseline phase);
- p99 back to baseline within 5 s after the surge: the first second s of the recovery phase such
  that the p99 of every 200 answered to requests sent from s to the end of the run is <=
  max(1.5 x baseline p99, baseline p99 + 20 ms) ("recovery s").

  Also reported, not the target: the first second from which *every* 1-second window's p99 stays
  under max(that bound, the worst 1-second p99 of the baseline phase) ("every window"). A 1-second
  p99 at ~170 answers/s is about the second-worst answer of that second, and the test asks whether
  the largest of the ~10 recovery windows stays under the largest of the 9 baseline windows; where
  that sets the bound, windows drawn from one and the same distribution fail it 10 / 19 = 53 % of
  the time. It is what the 2026-12-01 results used; the aggregate p99 is what "p99 back to
  baseline" says.

Saturation (best closed loop at c = 16, 32) is measured before each surge and once after the last, unless
`--saturation` is given; a surge's rates are set from the measurement just before it, and its goodput is judged
against the larger of the two around it. This box's cores change speed by up to ~1.7x within a day (the
morning's and the afternoon's saturation on 2026-12-06: 278 and 530 req/s), sometimes during a run: a surge judged
against a saturation measured minutes earlier in another state says little either way. Where the measurements of a
run differ by more than 15 %, the report says so.

    .venv/bin/python bench/bench_overload.py --out bench/results/overload-$(date +%F).md
    .venv/bin/python bench/bench_overload.py --surge-seconds 10   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers"), str(HERE.parent / "tests" / "service")]

import load  # noqa: E402
from bench_peers import IMAGES, models_folder, sample_request  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402


def recovery_s(run: load.Run, start: float, end: float, bound_ms: float) -> float:
    """Seconds after `start` until the p99 of everything from then up to `end` is <= bound (inf if never)."""
    for s in range(int(start), int(end)):
        p99 = load.summarize(run, since_s=s, until_s=end)["p99_ms"]
        if p99 <= bound_ms:  # NaN (no 200s) counts as bad
            return s - start
    return math.inf


def every_window_s(run: load.Run, start: float, end: float, bound_ms: float) -> float:
    """Seconds after `start` until every 1-s window up to `end` has p99 <= bound (inf if never)."""
    windows = [(s, load.summarize(run, since_s=s, until_s=s + 1)["p99_ms"]) for s in range(int(start), int(end))]
    for i, (s, _) in enumerate(windows):
        if all(not (p > bound_ms) for _, p in windows[i:]):  # NaN (no 200 in a second) counts as bad
            if all(p == p for _, p in windows[i:]):
                return s - start
    return math.inf


def surge(server: load.ServerProcess, call: load.Call, sat: float, factor: float, a: argparse.Namespace) -> dict:
    base_rate, surge_rate = 0.5 * sat, factor * sat
    schedule = [(base_rate, a.baseline_seconds), (surge_rate, a.surge_seconds), (base_rate, a.recovery_seconds)]
    t_surge, t_rec = a.baseline_seconds, a.baseline_seconds + a.surge_seconds
    t_end = t_rec + a.recovery_seconds
    cpu0, client0 = server.cpu_s(), time.process_time()
    h2load_cpu, h2load_counts = 0.0, {}
    with load.RssSampler(server, 0.25) as rss:
        if a.surge_client == "h2load":
            # the raw client keeps the baseline rate all along (its 503s are checked for Retry-After);
            # h2load adds the rest of the surge on top of it
            async def both() -> tuple[load.Run, tuple]:
                ours = asyncio.ensure_future(load.open_loop(
                    server.url, call, base_rate, t_end, seed=int(factor * 100), max_in_flight=a.max_in_flight,
                    timeout_s=a.request_timeout + 5, raw=a.client == "raw"))
                try:
                    extra = await load.h2load(server.url, call, surge_rate - base_rate, a.surge_seconds,
                                              delay_s=t_surge, clients=a.h2load_clients, timeout_s=a.request_timeout + 5)
                except BaseException:
                    ours.cancel()
                    raise
                return await ours, extra

            run, (rows, h2load_counts, h2load_cpu) = load.run(both())
            load.add_h2load(run, rows, h2load_counts, t_surge)
        else:
            run = load.run(load.open_loop(server.url, call, schedule, seed=int(factor * 100), max_in_flight=a.max_in_flight,
                                          timeout_s=a.request_timeout + 5, raw=a.client == "raw"))
    base = load.summarize(run, since_s=1, until_s=t_surge)  # the first second warms the connections
    during = load.summarize(run, since_s=t_surge, until_s=t_rec)
    after = load.summarize(run, since_s=t_rec, until_s=t_end)
    rss_base = max((m for t, m in rss.samples if t < t_surge), default=math.nan)
    rss_peak = max(m for _, m in rss.samples)
    p99_by_second = load.per_second(run)
    worst_base = max((x for x in p99_by_second[1:int(t_surge)] if x == x), default=0.0)  # NaN: no 200s
    bound = max(1.5 * base["p99_ms"], base["p99_ms"] + 20)
    window_bound = max(bound, worst_base)
    rec = recovery_s(run, t_rec, t_end, bound)
    rec_windows = every_window_s(run, t_rec, t_end, window_bound)
    rejected = during["errors"].get(503, 0)
    res = {
        "factor": factor, "rate": surge_rate, "base": base, "during": during, "after": after,
        "sat_before": sat, "sat_after": sat, "goodput_ratio": during["ok_rps"] / sat, "rejected": rejected,
        "rss_base": rss_base, "rss_peak": rss_peak, "rss_growth": (rss_peak - rss_base) / rss_base,
        "recovery_s": rec, "bound_ms": bound, "every_window_s": rec_windows, "window_bound_ms": window_bound, "cpu_s": server.cpu_s() - cpu0, "client_cpu_s": time.process_time() - client0,
        "h2load_cpu_s": h2load_cpu, "h2load_counts": h2load_counts,
        "p99_by_second": [round(x, 1) for x in p99_by_second[: int(t_end)]],
        "load1": os.getloadavg()[0],
    }
    res["checks"] = {
        "goodput >= 90 % of saturation": res["goodput_ratio"] >= 0.9,
        "rejections are 503 + Retry-After": set(during["errors"]) <= {503} and during["rejected_without_retry_after"] == 0,
        "rejection p99 <= 20 ms": not (during["rejected_p99_ms"] > 20) if rejected else True,
        "zero 500s": all(r["errors"].get(500, 0) == 0 for r in (base, during, after)),
        # a client-side timeout (status 0 after request_timeout + 5 s) is an accepted request past its deadline too
        "accepted p99 within the queue deadline": during["p99_ms"] <= 1e3 * a.request_timeout and not during["errors"].get(0),
        "RSS growth <= 10 %": res["rss_growth"] <= 0.10,
        "p99 back to baseline within 5 s": rec <= 5,
    }
    print(f"surge {factor}x ({surge_rate:.0f}/s): goodput {during['ok_rps']:.1f}/s, "
          f"errors {load.fmt_errors(during['errors'])}, accepted p99 {during['p99_ms']:.0f} ms, rejection p99 "
          f"{during['rejected_p99_ms']:.1f} ms, RSS {rss_base:.0f} -> {rss_peak:.0f} MiB, recovery {rec} s", flush=True)
    return res


def judge_goodput(res: dict, sat_after: float) -> dict:
    """The surge's goodput against the larger of the saturations measured just before and just after it (never
    flattering where the box slowed down or sped up in between)."""
    res["sat_after"] = sat_after
    res["goodput_ratio"] = res["during"]["ok_rps"] / max(res["sat_before"], sat_after)
    res["checks"]["goodput >= 90 % of saturation"] = res["goodput_ratio"] >= 0.9
    return res


def report(a: argparse.Namespace, info: dict, models_desc: str, sats: list[float], results: list[dict]) -> str:
    spread = None if a.saturation else load.drift(sats)
    lines = [f"# Overload: open-loop surges against dermagan serve, POST /eczema/add {a.size}x{a.size} image + mask ({a.image})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **model**: {models_desc}",
              f"- **server**: {'attached at ' + a.url + ', ' if a.url else ''}`dermagan serve`, {a.workers} worker process{'es' if a.workers > 1 else ''}, CPU provider, intra-op threads {max(1, a.threads // a.workers)} each, max batch "
              f"{a.max_batch}, max delay {a.max_delay_ms} ms, queue size {a.queue_size}, request timeout "
              f"{a.request_timeout:g} s, keep-alive {a.keep_alive} s, gc freeze {'on' if a.gc_freeze else 'off'}, "
              f"early refusal {'on' if a.early_refusal else 'off'}, log level {a.log_level}"
              + (f", access lines of refusals: {a.access_log_refusals}" if a.log_level in ("debug", "info") else ""),
              f"- **client**: bench/load.py open loop (Poisson, {a.client} client), same machine, at most {a.max_in_flight} requests in "
              f"flight; latency from the scheduled arrival (no coordinated omission)"
              + (f"; it sends the 50 % baseline all along, and the rest of each surge comes from h2load ("
                 f"{load.h2load_version()}, HTTP/1.1, {a.h2load_clients} connections at an even --rps each, latency from "
                 f"when it sent; its log has no headers, so Retry-After is checked on the raw client's 503s)"
                 if a.surge_client == "h2load" else ""),
              "- **saturation**: "
              + (f"{sats[0]:.1f} req/s (given)" if a.saturation else
                 f"best closed loop at c=16, 32, measured before each surge and after the last: "
                 f"{', '.join(f'{s:.1f}' for s in sats)} req/s; each surge's goodput is judged against the larger of the "
                 "two measurements around it, its rates set from the one before it")
              + ("" if spread is None else
                 f". **The box changed speed during this run** (the measurements {100 * spread:.0f} % apart): a ratio "
                 "here compares the surge with the faster of its two neighbours"),
              f"- **schedule per factor**: {a.baseline_seconds:g} s at 50 % -> {a.surge_seconds:g} s at the factor -> "
              f"{a.recovery_seconds:g} s at 50 %", ""]
    lines += ["| surge | saturation before / after req/s | offered req/s | goodput req/s | goodput / saturation | "
              "accepted p50 / p99 / p99.9 ms | 503s | 503 p99 ms | 503 without Retry-After | other errors | "
              "RSS MiB base -> peak | recovery s | every window s | client send lag p99 ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        d = r["during"]
        other = {k: v for k, v in d["errors"].items() if k != 503}
        lines.append(f"| {r['factor']:g}x | {r['sat_before']:.1f} / {r['sat_after']:.1f} | {r['rate']:.0f} | "
                     f"{d['ok_rps']:.1f} | {100 * r['goodput_ratio']:.0f} % | "
                     f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} / {d['p999_ms']:.0f} | {r['rejected']} | "
                     f"{d['rejected_p99_ms']:.1f} | {d['rejected_without_retry_after']}"
                     f"{' of ' + str(d['rejected_checked']) + ' checked' if a.surge_client == 'h2load' else ''} | {load.fmt_errors(other)} | "
                     f"{r['rss_base']:.0f} -> {r['rss_peak']:.0f} ({100 * r['rss_growth']:+.1f} %) | {r['recovery_s']} | "
                     f"{r['every_window_s']} | "
                     f"{d['send_lag_p99_ms']:.1f} |")
    lines += ["", "| surge | phase | req/s (200) | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for r in results:
        for phase in ("base", "during", "after"):
            s = r[phase]
            lines.append(f"| {r['factor']:g}x | {phase} | {s['ok_rps']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | "
                         f"{load.fmt_errors(s['errors'])} |")
    lines += ["", "## Targets", ""]
    for r in results:
        lines.append(f"- **{r['factor']:g}x**: " + "; ".join(f"{k}: {'met' if ok else '**NOT met**'}" for k, ok in r["checks"].items()))
        lines.append(f"  - recovery bound {r['bound_ms']:.0f} ms (every-window bound {r['window_bound_ms']:.0f} ms); "
                     f"p99 per second (ms): {r['p99_by_second']}")
        h2 = (f" + h2load {r['h2load_cpu_s']:.1f} s ({r['h2load_counts'].get('done', 0)} requests done, "
              f"{r['h2load_counts'].get('errored', 0)} errored, {r['h2load_counts'].get('timeout', 0)} timed out)"
              if r["h2load_counts"] else "")
        lines.append(f"  - server CPU {r['cpu_s']:.1f} s, load generator CPU {r['client_cpu_s']:.1f} s{h2} (same 2 cores); "
                     f"load average at the end {r['load1']:.1f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", help="default: the shipped models/ if present, else fixture models")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--workers", type=int, default=1, help="dermagan serve --workers (intra-op threads are --threads / workers each)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--request-timeout", type=float, default=30.0, help="DERMAGAN_REQUEST_TIMEOUT_S (the queue deadline)")
    p.add_argument("--saturation", type=float, default=0.0,
                   help="req/s; 0 = measure it before each surge and after the last")
    p.add_argument("--factors", default="2,5")
    p.add_argument("--baseline-seconds", type=float, default=10.0)
    p.add_argument("--surge-seconds", type=float, default=60.0)
    p.add_argument("--recovery-seconds", type=float, default=15.0)
    p.add_argument("--max-in-flight", type=int, default=1024)
    p.add_argument("--keep-alive", type=int, default=5, help="DERMAGAN_KEEP_ALIVE_S: idle keep-alive connections close after it")
    p.add_argument("--gc-freeze", type=int, choices=(0, 1), default=1, help="DERMAGAN_GC_FREEZE (1 = the default)")
    p.add_argument("--early-refusal", type=int, choices=(0, 1), default=1, help="DERMAGAN_EARLY_REFUSAL (1 = the default)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"],
                   help="DERMAGAN_LOG_LEVEL (default warning, as every result before 2026-12-06; the service's own default "
                        "is info, which writes access lines: one a served request, and of the refusals what "
                        "--access-log-refusals says)")
    p.add_argument("--access-log-refusals", default="summary", choices=["summary", "each"],
                   help="DERMAGAN_ACCESS_LOG_REFUSALS (default summary, the service's)")
    p.add_argument("--image", choices=IMAGES, default="gradient", help="what is uploaded (bench_peers.sample_request)")
    p.add_argument("--url", help="measure a server already running here (loopback) instead of starting one")
    p.add_argument("--pid", type=int, default=0, help="with --url: its process id, for RSS and CPU")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="see bench/load.py")
    p.add_argument("--surge-client", choices=["raw", "h2load"], default="raw",
                   help="h2load: the surge above the baseline comes from nghttp2's h2load (about half the client CPU "
                        "a request on these shared cores; apt-get install nghttp2-client). Not an open loop: its --rps "
                        "starts every connection at once on one period, so the surge comes as bursts of "
                        "--h2load-clients requests (1024 every 1.2 s at 2x), most of each refused while the models "
                        "then idle: 56 / 69 %% goodput at 2x / 5x against 91 / 82 %% with the raw client "
                        "(bench/results/overload-2026-12-05-amd-h2load-bursts.md). For burst tests, not the target")
    p.add_argument("--h2load-clients", type=int, default=1024, help="h2load's connections (default 1024)")
    p.add_argument("--out")
    a = p.parse_args()
    if a.surge_client == "h2load":
        try:
            load.h2load_version()  # fail before the server starts
        except RuntimeError as e:
            raise SystemExit(f"--surge-client h2load: {e}") from None
    info = load.machine()
    models_dir, models_desc = models_folder(a.models_dir)
    image, mask = sample_request(a.size, a.image)
    call = load.edit_call("/eczema/add", image, mask)
    add = next(m.name for m in load_manifest(models_dir).models if m.task == "add")
    if a.url:
        server = load.ServerProcess.attach(a.url, a.pid)
    else:
        server = load.dermagan_server(str(models_dir), load.free_port(), models=add, providers="CPUExecutionProvider",
                                      workers=a.workers, intra_op_threads=max(1, a.threads // a.workers), max_batch=a.max_batch, max_delay_ms=a.max_delay_ms,
                                      queue_size=a.queue_size, request_timeout_s=a.request_timeout,
                                      keep_alive_s=a.keep_alive, gc_freeze=bool(a.gc_freeze),
                                      early_refusal=bool(a.early_refusal), log_level=a.log_level,
                                      access_log_refusals=a.access_log_refusals).start()
    try:
        load.run(load.closed_loop(server.url, call, 8, 3, raw=a.client == "raw"))
        def saturation() -> float:
            sat = a.saturation or load.saturation(server, call, 10, raw=a.client == "raw")
            print(f"saturation {sat:.1f} req/s", flush=True)
            return sat

        sats, results = [saturation()], []
        for f in a.factors.split(","):
            res = surge(server, call, sats[-1], float(f), a)
            sats.append(sats[-1] if a.saturation else saturation())
            results.append(judge_goodput(res, sats[-1]))
            print(f"surge {f}x: goodput {100 * res['goodput_ratio']:.0f} % of saturation", flush=True)
    finally:
        server.stop()
    text = report(a, info, models_desc, sats, results)
    load.publish(text, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
