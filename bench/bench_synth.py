"""Throughput of the procedural renderer: patches per second at 128 and 256 px, 1 and 2 processes.

    .venv/bin/python bench/bench_synth.py                 # prints a Markdown table
    .venv/bin/python bench/bench_synth.py --out bench/results/synth-$(date +%F).md

A patch is one `render(kind, seed, size)` call -- for eczema that is the whole triplet (healthy,
eczema, mask). Target (issue 2): >= 20 eczema patches/s at 128 px on 2 cores. The table also gives
CPU seconds per patch, which is what to compare on a machine other people are using at the same
time (wall-clock rates then depend on the load average, printed in the header); the last column,
processes / CPU seconds per patch, is the rate the same work gives on otherwise idle cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from multiprocessing import get_context

import numpy as np

from dermagan.training.synth import RENDERER_NAME, render


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _work(job: tuple[str, int, int, int]) -> float:
    """Render `count` patches from `seed`; returns the CPU seconds they took."""
    kind, size, seed, count = job
    t = time.process_time()
    for s in range(seed, seed + count):
        render(kind, s, size)
    return time.process_time() - t


def measure(kind: str, size: int, procs: int, count: int) -> tuple[float, float]:
    """(patches per second of wall time, CPU seconds per patch)."""
    per = count // procs
    jobs = [(kind, size, 1000 + i * per, per) for i in range(procs)]
    if procs == 1:
        _work((kind, size, 0, 2))  # warm-up: imports, FFT plans
        t = time.perf_counter()
        cpu = _work(jobs[0])
        wall = time.perf_counter() - t
    else:
        with get_context().Pool(procs) as pool:
            pool.map(_work, [(kind, size, 0, 2)] * procs)  # warm-up every worker
            t = time.perf_counter()
            cpu = sum(pool.map(_work, jobs))
            wall = time.perf_counter() - t
    n = per * procs
    return n / wall, cpu / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=80, help="patches per 128-px measurement (a quarter at 256 px)")
    ap.add_argument("--kinds", default="eczema,hand,lesion")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)

    lines = [
        f"# Renderer throughput ({RENDERER_NAME})",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} logical cores "
        f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable)",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)",
        "",
        "| kind | size | processes | patches/s (wall) | CPU ms/patch | patches/s on idle cores (est.) |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for kind in args.kinds.split(","):
        for size in (128, 256):
            for procs in (1, 2):
                count = max(args.count // (4 if size == 256 else 1), 2 * procs)
                rate, cpu = measure(kind, size, procs, count)
                row = f"| {kind} | {size} | {procs} | {rate:.1f} | {1000 * cpu:.0f} | {procs / cpu:.0f} |"
                print(row, flush=True)
                lines.append(row)
    lines.append("")
    lines.append(f"- load average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
