"""Decoding an upload: the service's decoder against Pillow alone, in process.

    .venv/bin/python bench/bench_decode.py [--sizes 128x128 1280x960 4000x3000] [--rounds 5] [--out FILE]

`imaging.decode_image` hands an 8-bit sRGB JPEG or PNG to libjpeg-turbo / libpng through imagecodecs,
straight into a numpy array (`imaging._decode_fast`); everything else, and "Pillow alone" here, is
Pillow's decoder followed by the copy of its pixels into numpy. Both arms decode the same bytes,
alternated within every round so that the shared machine's drift hits them alike; every row checks
that both give the same pixels. Uploads: a photograph-like procedural eczema scene (bench_formats's) as
JPEG q92, as a PNG written by Pillow (its adaptive row filters) and as a PNG written by the service
(Paeth, what an edit answers: what a client sends back for a second edit).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402
from bench_formats import photograph  # noqa: E402

from dermagan.colour import to_srgb  # noqa: E402
from dermagan.service import imaging  # noqa: E402

MAX_PIXELS = 10**9


def pillow_alone(data: bytes) -> imaging.DecodedImage:
    """What decode_image did before the fast decoders, and still does for every other image."""
    img, fmt, turned, _ = imaging._load(imaging._header(data, "image", MAX_PIXELS), "image")
    return imaging._rgb(to_srgb(img), fmt, turned)


def service(data: bytes) -> imaging.DecodedImage:
    return imaging.decode_image(data, max_pixels=MAX_PIXELS)


def uploads(i: int, hw: tuple[int, int]) -> dict[str, bytes]:
    jpeg, _ = photograph(i, hw)
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    return {"JPEG q92": jpeg, "PNG (Pillow's writer)": png.getvalue(), "PNG (the service's writer)": imaging.encode_png(rgb)}


def _time(fn, data: bytes, budget_s: float) -> float:
    """Seconds per call: the mean over as many calls as fit in budget_s (at least one)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn(data)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= budget_s:
            return dt / n


def measure(sizes: list[tuple[int, int]], rounds: int, budget_s: float) -> list[dict]:
    rows = []
    for i, hw in enumerate(sizes):
        for name, data in uploads(i, hw).items():
            fast = imaging._decode_fast(imaging._header(data, "image", MAX_PIXELS), data) is not None
            same = np.array_equal(pillow_alone(data).rgb, service(data).rgb)
            times: dict[str, list[float]] = {"pillow": [], "service": []}
            for r in range(rounds):
                for arm in (("pillow", "service") if r % 2 == 0 else ("service", "pillow")):
                    times[arm].append(_time(pillow_alone if arm == "pillow" else service, data, budget_s))
            p, s = statistics.median(times["pillow"]), statistics.median(times["service"])
            rows.append({"size": f"{hw[1]}x{hw[0]}", "upload": name, "kb": len(data) / 1e3, "fast": fast,
                         "same": same, "pillow_ms": p * 1e3, "service_ms": s * 1e3, "speedup": p / s})
    return rows


def report(rows: list[dict], info: dict[str, str], rounds: int, budget_s: float) -> str:
    lines = [f"# Decoding uploads: the service's decoder vs Pillow alone ({info['date']})", "",
             "Machine: " + info["cpu"] + f"; Python {info['python']}; {info['versions']}; git {info['git commit']}; "
             f"load average at start {info['load average at start']}.", "",
             f"In process, one thread; per row the median over {rounds} rounds of the mean time of as many decodes "
             f"as fit in {budget_s:g} s, the arms alternated. `fast`: the service decoded it with libjpeg-turbo / "
             "libpng through imagecodecs. `same pixels`: both arms gave identical arrays.", "",
             "| image | upload | KB | fast | same pixels | Pillow alone ms | service ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['upload']} | {r['kb']:.0f} | {'yes' if r['fast'] else 'no'} | "
                     f"{'yes' if r['same'] else 'NO'} | {r['pillow_ms']:.3f} | {r['service_ms']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["128x128", "512x512", "1280x960", "4000x3000"], help="WxH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of decoding per arm and round")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    sizes = [(int(s.split("x")[1]), int(s.split("x")[0])) for s in args.sizes]
    info = load.machine()
    rows = measure(sizes, args.rounds, args.budget)
    text = report(rows, info, args.rounds, args.budget)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
