"""The encoding of an edit's result: PNG (the default) against `format=jpeg` and `format=webp`.

    .venv/bin/python bench/bench_formats.py [--sizes 1280x960 4000x3000] [--rounds 5] [--out FILE]

A real `dermagan serve` (the shipped models of `models/`, one worker) on loopback and one client that
uploads the same photograph-like JPEG again and again, the arms alternated within every round so that
the shared machine's drift hits them alike. Each photograph: a held-out procedural eczema scene (renderer
seed 4·10^9 + i) rendered at 1024 px, resized up to the size and given a grain of sensor-like noise, so
that it has a photograph's fine texture at every scale. Per size, endpoint and format: the request's
latency (upload to the last byte of the answer; median and max of the rounds), the answer's size, and
how far the lossy answer is from the PNG one (PSNR; the PNG is the exact result).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402

from dermagan.training.metrics.pixel import psnr  # noqa: E402
from dermagan.training.synth import render  # noqa: E402

SEED_BASE = 4 * 10**9
FORMATS = ("png", "jpeg", "webp")


def photograph(i: int, hw: tuple[int, int]) -> tuple[bytes, bytes]:
    """(JPEG q92 of a photograph-like eczema scene at hw, its eczema mask as PNG)."""
    h, w = hw
    scene = render("eczema", SEED_BASE + i, 1024)
    rgb = np.asarray(Image.fromarray(scene.image).resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
    rgb += np.random.default_rng(i).normal(0, 4, rgb.shape).astype(np.int16)
    image, mask = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(image, format="JPEG", quality=92)
    Image.fromarray(scene.mask).resize((w, h), Image.Resampling.NEAREST).save(mask, format="PNG")
    return image.getvalue(), mask.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def measure(url: str, sizes: list[tuple[int, int]], rounds: int) -> list[dict]:
    rows = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for i, hw in enumerate(sizes):
            image, mask = photograph(i, hw)
            for path, with_mask in (("/eczema/remove", True), ("/eczema/add", False)):
                files = {"image": ("photo.jpg", image, "image/jpeg")}
                if with_mask:
                    files["mask"] = ("mask.png", mask, "image/png")
                times: dict[str, list[float]] = {f: [] for f in FORMATS}
                answers: dict[str, bytes] = {}
                for r in range(rounds + 1):  # round 0 warms the path up and is not counted
                    order = FORMATS[r % 3:] + FORMATS[:r % 3]
                    for fmt in order:
                        t0 = time.perf_counter()
                        resp = client.post(path, files=files, data={"format": fmt})
                        dt = time.perf_counter() - t0
                        if resp.status_code != 200:
                            raise SystemExit(f"{path} format={fmt}: {resp.status_code} {resp.text[:200]}")
                        answers[fmt] = resp.content
                        if r:
                            times[fmt].append(dt)
                exact = _decoded(answers["png"])
                for fmt in FORMATS:
                    rows.append({
                        "size": f"{hw[1]}x{hw[0]}", "edit": path + (" (mask)" if with_mask else " (no mask)"),
                        "format": fmt, "median_s": statistics.median(times[fmt]), "max_s": max(times[fmt]),
                        "mb": len(answers[fmt]) / 1e6, "upload_mb": len(image) / 1e6,
                        "psnr": None if fmt == "png" else psnr(_decoded(answers[fmt]), exact),
                    })
    return rows


def report(rows: list[dict], info: dict[str, str], rounds: int) -> str:
    lines = [f"# Result encodings of /eczema edits: PNG vs JPEG vs WebP ({info['date']})", "",
             "Machine: " + info["cpu"] + f"; Python {info['python']}; {info['versions']}; git {info['git commit']}; "
             f"load average at start {info['load average at start']}.", "",
             f"One `dermagan serve` (shipped models, one worker), one client on loopback; {rounds} rounds, the "
             "three formats alternated within each. Latency: upload to last byte. PSNR: the lossy answer "
             "against the PNG answer (the exact result), over the whole image.", "",
             "| photo (upload) | edit | format | median s | max s | answer MB | PSNR to PNG (dB) | median vs PNG |",
             "|---|---|---|---|---|---|---|---|"]
    png = {(r["size"], r["edit"]): r["median_s"] for r in rows if r["format"] == "png"}
    for r in rows:
        db = "exact" if r["psnr"] is None else ("inf" if r["psnr"] == float("inf") else f"{r['psnr']:.1f}")
        lines.append(f"| {r['size']} ({r['upload_mb']:.2f} MB JPEG) | {r['edit']} | {r['format']} | {r['median_s']:.3f} | "
                     f"{r['max_s']:.3f} | {r['mb']:.2f} | {db} | {r['median_s'] / png[r['size'], r['edit']]:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--sizes", nargs="+", default=["1280x960", "4000x3000"], help="WxH of the photographs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=8391)
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    sizes = [(int(s.split("x")[1]), int(s.split("x")[0])) for s in args.sizes]
    info = load.machine()
    server = load.dermagan_server(str(args.models_dir), args.port).start()
    try:
        rows = measure(server.url, sizes, args.rounds)
    finally:
        server.stop()
    text = report(rows, info, args.rounds)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
