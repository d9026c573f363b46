"""Memory of the service under concurrent edits of large photographs, with and without the image budget.

    .venv/bin/python bench/bench_memory.py [--budgets 0 100 50 25] [--concurrency 8 32] [--size 4000x3000]
                                           [--work-px PX] [--all-models] [--memory-limit MIB] [--out FILE]

A real `dermagan serve` (the shipped add and cycle-remove models, or all, one worker) on loopback, started
afresh for every cell so that its peak resident memory (the kernel's VmHWM) belongs to that cell alone.
C client threads each upload the same photograph-like 12-megapixel JPEG twice -- a mask-free
/eczema/remove (at `--work-px`, default the service's: the model's resolution), then an /eczema/add with
its mask -- all at once. Per DERMAGAN_IMAGE_BUDGET_MP (0 = no
budget) and C: the resident memory once warm, its peak during the load and after it, the wall time,
req/s, latency and the answers by status. The budget's claim: peak memory bounded by the budget, not
by the number of uploads in flight, at the same throughput (the codec threads and the model are the
bottleneck, not how many images wait).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402
from bench_formats import photograph  # noqa: E402

MODELS = ("eczema-add", "cycle-remove")


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class MemoryCgroup:
    """A cgroup v1 memory controller group with a hard limit -- the kernel mechanism behind a container's
    or a Kubernetes pod's memory limit -- that the server is started in (root only)."""

    ROOT = Path("/sys/fs/cgroup/memory")

    def __init__(self, limit_mib: int) -> None:
        import os

        self.path = self.ROOT / f"dermagan-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_mib * 2**20))
        self.limit_mib = limit_mib

    def wrap(self, argv: list[str]) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def peak_mib(self) -> float:
        return int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20

    def oom_kills(self) -> int:
        fields = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(fields.get("oom_kill", 0))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # processes still leaving
                time.sleep(0.1)


def cell(models_dir: Path, port: int, budget_mp: float, concurrency: int, image: bytes, mask: bytes,
         models: tuple[str, ...] = MODELS, memory_limit_mib: int = 0, work_px: int = 0) -> dict:
    scale = {"work_px": str(work_px)} if work_px else {}
    only = {"models": models} if models else {}
    server = load.dermagan_server(str(models_dir), port, image_budget_mp=budget_mp, request_timeout_s=600,
                                  queue_size=256, log_level="warning", **only)
    group = MemoryCgroup(memory_limit_mib) if memory_limit_mib else None
    if group is not None:
        server.argv = group.wrap(server.argv)
    try:
        server.start()
        base = server.rss_mb()
        with httpx.Client(base_url=server.url, timeout=900) as warm:  # one of each, so that both paths are warm
            warm.post("/eczema/remove", files={"image": ("p.jpg", image, "image/jpeg")}, data=scale)
            warm.post("/eczema/add", files={"image": ("p.jpg", image, "image/jpeg"), "mask": ("m.png", mask)})
        warm_mb = server.rss_mb()

        def client(_: int) -> list[tuple[int, float]]:
            out = []
            with httpx.Client(base_url=server.url, timeout=900) as c:
                for path, files, data in (("/eczema/remove", {"image": ("p.jpg", image, "image/jpeg")}, scale),
                                          ("/eczema/add", {"image": ("p.jpg", image, "image/jpeg"), "mask": ("m.png", mask)}, {})):
                    t0 = time.perf_counter()
                    try:
                        code = c.post(path, files=files, data=data).status_code
                    except httpx.HTTPError:  # the server died under it (e.g. killed at its memory limit)
                        code = 0
                    out.append((code, time.perf_counter() - t0))
            return out

        with load.RssSampler(server, every_s=0.25) as rss:
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(concurrency) as pool:
                results = [x for xs in pool.map(client, range(concurrency)) for x in xs]
            wall = time.perf_counter() - t0
        alive = server.proc.poll() is None
        peak = _peak_mb(server.proc.pid) if alive else float("nan")
        after = server.rss_mb()
        limited = {} if group is None else {"cgroup_peak": group.peak_mib(), "oom_kills": group.oom_kills()}
    finally:
        server.stop()
        if group is not None:
            group.remove()
    lat = [dt for code, dt in results if code == 200]
    return {**limited, "alive": alive, "budget": budget_mp, "c": concurrency, "base": base, "warm": warm_mb, "peak": peak,
            "sampled_max": max(m for _, m in rss.samples), "after": after, "wall": wall,
            "rps": len(lat) / wall, "p50": statistics.median(lat) if lat else float("nan"),
            "max": max(lat) if lat else float("nan"), "codes": Counter(code for code, _ in results)}


def report(rows: list[dict], info: dict[str, str], size: str, upload_mb: float, models: tuple[str, ...],
           memory_limit_mib: int = 0, work_px: int = 0) -> str:
    lines = [f"# Memory under concurrent edits of {size} photographs, by image budget ({info['date']})", "",
             f"Machine: {info['cpu']}; Python {info['python']}; {info['versions']}; git {info['git commit']}; "
             f"load average at start {info['load average at start']}.", "",
             f"One `dermagan serve` per row (models {', '.join(models) or 'all of the folder'}, one worker, request timeout 600 s, queue 256), "
             f"warmed with one request of each kind; then C clients at once, each a mask-free /eczema/remove"
             + (f" (work_px {work_px})" if work_px else "") + " and "
             f"an /eczema/add with mask of the same {upload_mb:.1f} MB JPEG. Peak = the server's VmHWM over its "
             "life (start-up and warm-up included)." + (
                 f" Each server ran in a memory cgroup limited to {memory_limit_mib} MiB (the kernel mechanism of a "
                 "container's or pod's limit): cgroup peak = its memory.max_usage_in_bytes (page cache included), "
                 "OOM kills = its memory.oom_control count; answer 0 = the connection died." if memory_limit_mib else ""),
             "", "| image budget (MP) | C | RSS warm MiB | peak MiB | peak - warm MiB | RSS after MiB | wall s | req/s | "
             "p50 s | max s | answers |" + (" cgroup peak MiB | OOM kills |" if memory_limit_mib else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if memory_limit_mib else "")]
    for r in rows:
        budget = "off (0)" if not r["budget"] else f"{r['budget']:g}"
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items()))
        lines.append(f"| {budget} | {r['c']} | {r['warm']:.0f} | {r['peak']:.0f} | {r['peak'] - r['warm']:.0f} | "
                     f"{r['after']:.0f} | {r['wall']:.1f} | {r['rps']:.2f} | {r['p50']:.1f} | {r['max']:.1f} | {codes} |"
                     + (f" {r['cgroup_peak']:.0f} | {r['oom_kills']} |" if "cgroup_peak" in r else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.0, 100.0, 50.0, 25.0],
                    help="DERMAGAN_IMAGE_BUDGET_MP arms")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--size", default="4000x3000", help="WxH of the photograph")
    ap.add_argument("--all-models", action="store_true", help=f"serve every model of the folder (default: {', '.join(MODELS)})")
    ap.add_argument("--memory-limit", type=int, default=0, metavar="MIB",
                    help="run each server in a cgroup v1 memory group with this hard limit (root), as a container would")
    ap.add_argument("--work-px", type=int, default=0,
                    help="the mask-free edits' work_px (0: the service's default, the model's resolution; the image's "
                         "shorter side: at full resolution)")
    ap.add_argument("--port", type=int, default=8393)
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    image, mask = photograph(0, (h, w))
    info = load.machine()
    rows = []
    for c in args.concurrency:
        for budget in args.budgets:
            rows.append(cell(args.models_dir, args.port, budget, c, image, mask, () if args.all_models else MODELS,
                             args.memory_limit, args.work_px))
            print(f"budget {budget:g} MP, c = {c}: peak {rows[-1]['peak']:.0f} MiB, {rows[-1]['rps']:.2f} req/s, "
                  f"{dict(rows[-1]['codes'])}", file=sys.stderr)
    load.publish(report(rows, info, args.size, len(image) / 1e6, () if args.all_models else MODELS,
                        args.memory_limit, args.work_px), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
