"""Benchmark of the inference service (issue 4): one run, one machine, one table.

1. R_ort(b): raw ONNX Runtime images/s per model at batch 1..max_batch on pre-built tensors, with
   the service's own Engine (same session options and threads).
2. R_codec: decode + pre-processing + post-processing + PNG encode images/s per endpoint, with the
   service's own pipeline functions (one thread).
3. End-to-end: a real `dermagan serve` on loopback (`--providers`, `--workers`; load.dermagan_server); closed-loop
   clients at concurrency 1, 4, 16, 64 (bench/load.py's raw HTTP client; `--client httpx` for httpx,
   which itself sets the pace at high concurrency): req/s, p50/p99/p99.9, errors by code, and from the
   server's /metrics where its time went: mean batch size, queue wait (queued to first batch) and
   ONNX Runtime time per batch.

Targets: saturation req/s >= 0.9 x min(R_ort at its best batch, R_codec);
p50 at concurrency 1 <= raw single-image latency + codec latency + 3 ms.

    .venv/bin/python bench/bench_service.py                 # fixture models, prints the table
    .venv/bin/python bench/bench_service.py --models-dir models --out bench/results/service-X.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402  (bench/load.py: the load generators)

from dermagan.manifest import load_manifest  # noqa: E402
from dermagan.service import imaging, pipeline  # noqa: E402
from dermagan.service.engine import Engine  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import onnxruntime as ort
    gpu = load.gpu_name()
    gpu = f", GPU {gpu}" if gpu else ""
    return f"{cpu}, {cores} cores usable{gpu}, Python {platform.python_version()}, onnxruntime {ort.__version__}"


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# ---- 1. raw ONNX Runtime ---------------------------------------------------------------------

def bench_ort(models_dir: Path, names: list[str], max_batch: int, threads: int,
              providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")) -> dict[str, dict[int, float]]:
    manifest = load_manifest(models_dir)
    rates: dict[str, dict[int, float]] = {}
    rng = np.random.default_rng(0)
    for name in names:
        entry = manifest.get(name)
        eng = Engine(entry, models_dir / entry.file, providers=providers,
                     intra_op_threads=threads, buckets=tuple(range(1, max_batch + 1)))
        rates[name] = {}
        for b in range(1, max_batch + 1):
            feeds = eng.example_inputs(b)
            for k, v in feeds.items():
                if v.dtype == np.float32:
                    feeds[k] = rng.uniform(-1, 1, v.shape).astype(np.float32)
            sec = load.timed(lambda: eng.run(feeds), min_s=0.3)
            rates[name][b] = b / sec
    return rates


# ---- 2. codec --------------------------------------------------------------------------------

def sample_upload(h: int, w: int) -> tuple[bytes, bytes]:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.dstack([x * 255 // w, y * 255 // h, (x * y) % 256]).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + np.random.default_rng(0).integers(-8, 8, rgb.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 3: h // 2, w // 3: w // 2] = True
    upload = io.BytesIO()  # as a client's software writes a PNG: Pillow at zlib's default level
    Image.fromarray(rgb).save(upload, format="PNG", compress_level=6)
    return upload.getvalue(), imaging.encode_mask_png(mask)


def bench_codec(image: bytes, mask: bytes, model_hw: tuple[int, int], gen_hw: tuple[int, int], *,
                cpu: bool = False) -> dict[str, float]:
    """Seconds per image of everything but inference, per endpoint."""
    fake = np.zeros((3, *model_hw), np.float32)

    def add() -> None:
        plan = pipeline.plan_masked_edit(image, mask, model_hw, max_pixels=16_000_000, dilate_px=8, context=0.5)
        pipeline.finish_masked_edit(plan, fake, dilate_px=8)

    def segment() -> None:
        plan = pipeline.plan_segment(image, model_hw, max_pixels=16_000_000)
        pipeline.finish_segment(plan, fake[:1])

    gen = np.zeros((1, 3, *gen_hw), np.float32)
    return {"add": load.timed(add, cpu=cpu), "segment": load.timed(segment, cpu=cpu),
            "generate": load.timed(lambda: pipeline.finish_generate(gen), cpu=cpu)}


# ---- 3. end to end ---------------------------------------------------------------------------

def model_stats(url: str, model: str) -> dict[str, float]:
    """Sums and counts of the model's histograms in GET /metrics: batch rows, queue wait, inference time."""
    text = httpx.get(url + "/metrics").text
    out = {}
    for metric in ("batch_size", "queue_seconds", "inference_seconds"):
        for part in ("sum", "count"):
            m = re.search(rf'dermagan_{metric}_{part}{{model="{model}"}} (\S+)', text)
            out[f"{metric}_{part}"] = float(m.group(1)) if m else 0.0
    return out


def per(after: dict[str, float], before: dict[str, float], metric: str, scale: float = 1.0) -> float:
    """Mean of a histogram over the observations between two readings (nan when none)."""
    n = after[f"{metric}_count"] - before[f"{metric}_count"]
    return scale * (after[f"{metric}_sum"] - before[f"{metric}_sum"]) / n if n else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, help="default: fixture models built in a temporary folder")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = cores)")
    ap.add_argument("--seconds", type=float, default=4.0, help="per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--size", default="384x512", help="HxW of the uploaded image")
    ap.add_argument("--providers", default=os.environ.get("DERMAGAN_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider"),
                    help="ONNX Runtime providers, in order, for the raw table and the server (default: DERMAGAN_PROVIDERS, "
                    "else CUDA then CPU)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (dermagan serve --workers)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator (bench/load.py): raw pre-encoded HTTP/1.1, ~0.13 ms of CPU a request (default), "
                    "or httpx, whose CPU per request grows with concurrency (~17 ms at 64 on 2 cores) until it, not "
                    "the server, sets the pace")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args()
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())

    tmp = None
    models_dir = args.models_dir
    if models_dir is None:
        from fixture_models import build_models
        tmp = tempfile.TemporaryDirectory()
        models_dir = Path(tmp.name)
        build_models(models_dir)
    manifest = load_manifest(models_dir)
    add = manifest.by_task("add")[0]
    gen = manifest.by_task("generate")[0]
    seg = manifest.by_task("segment")[0]
    h, w = (int(v) for v in args.size.split("x"))
    image, mask = sample_upload(h, w)

    load0 = os.getloadavg()
    lines = [f"# Service benchmark ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit()})", "",
             f"Machine: {machine()}", f"Models: {models_dir}" + (" (fixture models: small random-weight ONNX "
             "graphs from tests/service/fixture_models.py, not the shipped models)" if tmp else ""),
             f"Upload: {w}x{h} PNG ({len(image)} bytes) + mask; max_batch {args.max_batch}; "
             f"client ({args.client}, bench/load.py) and server share the machine.",
             f"Providers: {', '.join(providers)}; server workers: {args.workers}.", ""]

    print("raw ONNX Runtime ...", file=sys.stderr)
    ort_rates = bench_ort(models_dir, [add.name, gen.name, seg.name], args.max_batch, args.threads, providers)
    lines += ["## Raw ONNX Runtime, images/s by batch", "",
              "| model | " + " | ".join(f"b={b}" for b in range(1, args.max_batch + 1)) + " | best | single latency |",
              "|---|" + "---|" * (args.max_batch + 2)]
    for name, rates in ort_rates.items():
        best = max(rates.values())
        lines.append(f"| {name} | " + " | ".join(f"{r:.0f}" for r in rates.values())
                     + f" | {best:.0f} | {1000 / rates[1]:.2f} ms |")

    print("codec ...", file=sys.stderr)
    hw = tuple(add.resolution), tuple(gen.resolution)
    codec = bench_codec(image, mask, *hw)  # type: ignore[arg-type]
    codec_cpu = bench_codec(image, mask, *hw, cpu=True)  # type: ignore[arg-type]
    lines += ["", "## Codec (decode + pre/post + PNG encode, one thread), images/s", "",
              "| endpoint | images/s (wall) | latency (wall) | CPU time per image |", "|---|---|---|---|"]
    for k, sec in codec.items():
        lines.append(f"| {k} | {1 / sec:.0f} | {sec * 1000:.2f} ms | {codec_cpu[k] * 1000:.2f} ms |")

    server = load.dermagan_server(str(models_dir), load.free_port(), max_batch=args.max_batch, queue_size=256,
                                  intra_op_threads=args.threads, providers=providers, workers=args.workers,
                                  log_level="warning").start()
    url = server.url
    levels = [int(c) for c in args.concurrency.split(",")]
    scenarios = {
        "POST /eczema/add (image + mask)": (add.name, codec["add"], load.edit_call("/eczema/add", image, mask)),
        "POST /generate (count 1)": (gen.name, codec["generate"], load.Call(
            "/generate", json.dumps({"kind": "eczema", "seed": 1}).encode(), {"content-type": "application/json"})),
    }
    raw = args.client == "raw"
    verdicts = []
    try:
        for title, (model, codec_s, call) in scenarios.items():
            print(f"end to end: {title} ...", file=sys.stderr)
            lines += ["", f"## End to end: {title}", "",
                      "| concurrency | req/s | p50 ms | p99 ms | p99.9 ms | mean batch | queue wait ms | inference ms/batch | "
                      "server CPU ms/req | client CPU ms/req | codes |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            results = {}
            asyncio.run(load.closed_loop(url, call, 2, 0.5, raw=raw))  # warm the connections and caches
            for c in levels:
                before = model_stats(url, model)
                cpu0, client0 = server.cpu_s(), time.process_time()
                run = asyncio.run(load.closed_loop(url, call, c, args.seconds, raw=raw))
                lat = [x.latency_s for x in run.samples if x.status == 200]
                codes = Counter(x.status for x in run.samples)
                cpu_ms = (server.cpu_s() - cpu0) * 1000 / max(sum(codes.values()), 1)
                client_ms = (time.process_time() - client0) * 1000 / max(sum(codes.values()), 1)
                after = model_stats(url, model)
                rps = sum(codes.values()) / args.seconds
                mean_batch = per(after, before, "batch_size")
                results[c] = (rps, pct(lat, 50))
                lines.append(f"| {c} | {rps:.0f} | {pct(lat, 50):.2f} | {pct(lat, 99):.2f} | {pct(lat, 99.9):.2f} | "
                             f"{mean_batch:.2f} | {per(after, before, 'queue_seconds', 1000):.2f} | "
                             f"{per(after, before, 'inference_seconds', 1000):.2f} | {cpu_ms:.2f} | {client_ms:.2f} | "
                             f"{dict(sorted(codes.items()))} |")
            ort_best = max(ort_rates[model].values())
            ceiling = min(ort_best, 1 / codec_s)
            saturation = max(r for r, _ in results.values())
            single = 1000 / ort_rates[model][1] + codec_s * 1000
            p50_c1 = results[levels[0]][1]
            verdicts.append(f"- {title}: saturation {saturation:.0f} req/s vs 0.9 x min(R_ort best {ort_best:.0f}, "
                            f"R_codec {1 / codec_s:.0f}) = {0.9 * ceiling:.0f} -> "
                            f"{'MET' if saturation >= 0.9 * ceiling else 'NOT MET'}; p50 at c=1 {p50_c1:.2f} ms vs "
                            f"raw single {1000 / ort_rates[model][1]:.2f} + codec {codec_s * 1000:.2f} + 3 = {single + 3:.2f} ms -> "
                            f"{'MET' if p50_c1 <= single + 3 else 'NOT MET'}")
    finally:
        server.stop()
        if tmp is not None:
            tmp.cleanup()
    lines += ["", "## Targets", "", *verdicts, "",
              f"Load average (1, 5, 15 min) at the start: {load0}; at the end: {os.getloadavg()}.", ""]
    load.publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
