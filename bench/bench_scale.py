"""Mask-free edits of images larger than the model: at which scale should the CycleGAN see them?

    .venv/bin/python bench/bench_scale.py [--size 512] [--n 24] [--work-px 128 256 512]

Held-out procedural eczema triplets (healthy, eczema, mask) rendered at `--size` px -- the same
scenes the 128 px training images show, at a higher resolution -- go through the service's own
pipeline (`plan_tiled_edit` + `TileBlender`, as `POST /eczema/add` / `/eczema/remove` without a mask)
with the shipped `cycle-add` / `cycle-remove` at each `--work-px` (the multipart field; the service's
default is the model's resolution, 128; `--size` itself is the model on the image's own pixels, one
tile per 128 px, the only behaviour before 2026-12-04). Reported against the renderer's exact
counterpart at full resolution:

- remove (eczema in): PSNR to the healthy truth over the image and inside the eczema mask, and the
  share of pixels the shipped segmenter (`eczema-segment`, on the output shrunk to its 128 px) calls
  eczema, next to the same share on the input and on the truth;
- add (healthy in): PSNR to the eczema truth, and the segmenter-positive share.

Renderer seeds from 3·10^9: none of training [0, 10^6), evaluation [10^9, ...), validation and gallery
[2·10^9, ...) uses them.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from dermagan.manifest import load_manifest
from dermagan.service import imaging, pipeline
from dermagan.service.settings import Settings
from dermagan.training.metrics.pixel import psnr
from dermagan.training.synth import render

ROOT = Path(__file__).resolve().parents[1]
SEED_BASE = 3 * 10**9
DEFAULTS = Settings.from_env({})  # the service's tile overlap, mask dilation and context


def _session(models: Path, task: str) -> tuple[ort.InferenceSession, tuple[int, int]]:
    entries = load_manifest(models).by_task(task)
    if not entries:
        raise SystemExit(f"{models}: no model for task {task!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(models / entries[0].file), opts, providers=["CPUExecutionProvider"])
    return session, entries[0].resolution


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def edit(session: ort.InferenceSession, model_hw: tuple[int, int], rgb: np.ndarray, work_px: int,
         fade: float) -> tuple[np.ndarray, int]:
    """What the service returns for `rgb` without a mask at `work_px` (its pipeline, batches of 8
    tiles), and how many tiles the model ran."""
    plan = pipeline.plan_tiled_edit(_png(rgb), model_hw, max_pixels=DEFAULTS.max_pixels,
                                    overlap=DEFAULTS.tile_overlap, work_px=work_px)
    blender = pipeline.TileBlender(plan, fade=fade)
    for origins, inputs in plan.chunks(8):
        blender.add(origins, session.run(None, inputs)[0])
    return imaging.decode_image(blender.result(), max_pixels=DEFAULTS.max_pixels).rgb, plan.tiles


def masked_edit(session: ort.InferenceSession, model_hw: tuple[int, int], rgb: np.ndarray, mask: np.ndarray,
                fade: float | None) -> np.ndarray:
    """What the service returns for `rgb` + `mask` (its default dilation and context); fade None:
    without the detail put back, i.e. the output resized back alone (the service before 2026-12-04)."""
    dilate_px = DEFAULTS.mask_dilate_px
    plan = pipeline.plan_masked_edit(_png(rgb), _png(mask.astype(np.uint8) * 255), model_hw,
                                     max_pixels=DEFAULTS.max_pixels, dilate_px=dilate_px, context=DEFAULTS.mask_context)
    out = session.run(None, plan.inputs)[0][0]
    if fade is not None:
        png = pipeline.finish_masked_edit(plan, out, dilate_px=dilate_px, fade=fade)
        return imaging.decode_image(png, max_pixels=DEFAULTS.max_pixels).rgb
    t, l, b, r = plan.box
    edited = imaging.resize_rgb(imaging.from_model_output(out), (b - t, r - l))
    result = rgb.copy()
    result[t:b, l:r] = imaging.composite(rgb[t:b, l:r], edited, imaging.feather_alpha(mask[t:b, l:r], dilate_px))
    return result


def positive_share(session: ort.InferenceSession, model_hw: tuple[int, int], rgb: np.ndarray) -> float:
    x = imaging.to_model_input(imaging.resize_rgb(rgb, model_hw))[None]
    return float((session.run(None, {"image": x})[0] > 0).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--size", type=int, default=512, help="side of the held-out images (px)")
    p.add_argument("--n", type=int, default=24, help="held-out images")
    p.add_argument("--work-px", type=int, nargs="+", default=None, help="default: 128, 256 and --size")
    p.add_argument("--fades", type=float, nargs="+", default=[0, 6, 12, 24, 48],
                   help="remove at the default work_px with these detail fades (levels; 0 = all detail back)")
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    a = p.parse_args(argv)
    work = a.work_px or sorted({128, 256, a.size})
    remove, rm_hw = _session(a.models, "cycle-remove")
    add, add_hw = _session(a.models, "cycle-add")
    seg, seg_hw = _session(a.models, "segment")

    t0 = time.perf_counter()
    samples, seed = [], SEED_BASE
    while len(samples) < a.n:  # eczema that covers a visible part of the image
        s = render("eczema", seed, size=a.size)
        seed += 1
        if s.mask is not None and (s.mask > 0).mean() > 0.03:
            samples.append(s)
    rendered_s = time.perf_counter() - t0

    rows = {w: {"rm_psnr": [], "rm_psnr_in": [], "rm_pos": [], "add_psnr": [], "add_pos": [], "s": 0.0, "tiles": 0}
            for w in work}
    for s in samples:
        inside = s.mask > 0
        for w in work:
            t = time.perf_counter()
            healed, tiles = edit(remove, rm_hw, s.image, w, pipeline.REMOVED_DETAIL_FADE)
            added, _ = edit(add, add_hw, s.healthy, w, 0.0)
            r = rows[w]
            r["s"] += time.perf_counter() - t
            r["tiles"] = tiles  # the same for every image of this size
            r["rm_psnr"].append(psnr(healed, s.healthy))
            r["rm_psnr_in"].append(psnr(healed, s.healthy, inside))
            r["rm_pos"].append(positive_share(seg, seg_hw, healed))
            r["add_psnr"].append(psnr(added, s.image))
            r["add_pos"].append(positive_share(seg, seg_hw, added))
    fades: dict[float, list[tuple[float, float, float]]] = {f: [] for f in a.fades}
    for s in samples:
        for f in a.fades:
            healed, _ = edit(remove, rm_hw, s.image, min(rm_hw), f)
            fades[f].append((psnr(healed, s.healthy), psnr(healed, s.healthy, s.mask > 0),
                             positive_share(seg, seg_hw, healed)))
    add_m, add_m_hw = _session(a.models, "add")
    rm_m, rm_m_hw = _session(a.models, "remove")
    variants = {"resized back alone (before 2026-12-04)": None, "all detail put back (F = 0)": 0.0,
                f"detail where the model changed < F = {pipeline.REMOVED_DETAIL_FADE:g}": pipeline.REMOVED_DETAIL_FADE}
    masked: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for s in samples:
        inside = s.mask > 0
        for v, f in variants.items():
            masked[v].append((psnr(masked_edit(rm_m, rm_m_hw, s.image, inside, f), s.healthy, inside),
                              psnr(masked_edit(add_m, add_m_hw, s.healthy, inside, f), s.image, inside)))
    before = statistics.mean(positive_share(seg, seg_hw, s.image) for s in samples)
    truth_healthy = statistics.mean(positive_share(seg, seg_hw, s.healthy) for s in samples)
    unchanged = statistics.mean(psnr(s.image, s.healthy) for s in samples)
    unchanged_in = statistics.mean(psnr(s.image, s.healthy, s.mask > 0) for s in samples)

    lines = [f"# Mask-free edits at {a.size} px: the CycleGAN at several working sizes "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"{a.n} held-out procedural eczema triplets at {a.size} px (renderer seeds from {SEED_BASE:.0e}, "
             f"rendered in {rendered_s:.0f} s), the shipped models of `{a.models.name}/`, the service's pipeline. "
             "Mean over the images.", "",
             "| work_px | tiles / image | remove: PSNR to healthy truth, image / inside eczema (dB) | remove: "
             "segmenter-positive share | add: PSNR to eczema truth (dB) | add: segmenter-positive share | "
             "s / image (both) |",
             "|---|---|---|---|---|---|---|"]
    for w in work:
        r = rows[w]
        lines.append(f"| {w}{' (default)' if w == min(rm_hw) else ''}{' (native)' if w >= a.size else ''} | {r['tiles']} "
                     f"| {statistics.mean(r['rm_psnr']):.2f} / {statistics.mean(r['rm_psnr_in']):.2f} "
                     f"| {statistics.mean(r['rm_pos']):.3f} | {statistics.mean(r['add_psnr']):.2f} "
                     f"| {statistics.mean(r['add_pos']):.3f} | {r['s'] / a.n:.2f} |")
    lines += ["", f"For reference: the input itself against the healthy truth {unchanged:.2f} / {unchanged_in:.2f} dB "
              f"(image / inside eczema); segmenter-positive share on the eczema inputs {before:.3f}, on the healthy "
              f"truth {truth_healthy:.3f}."]
    lines += ["", f"Remove at the default work_px with the fine detail put back only where the model changed a "
              f"pixel by less than F levels (`pipeline.REMOVED_DETAIL_FADE` = {pipeline.REMOVED_DETAIL_FADE:g}; "
              "0 = all of it):", "",
              "| F | PSNR to healthy truth, image / inside eczema (dB) | segmenter-positive share |", "|---|---|---|"]
    for f, vals in fades.items():
        lines.append(f"| {f:g} | {statistics.mean(v[0] for v in vals):.2f} / {statistics.mean(v[1] for v in vals):.2f} "
                     f"| {statistics.mean(v[2] for v in vals):.3f} |")
    lines += ["", "With the eczema mask (the supervised `remove` / `add`, the service's defaults): PSNR inside the "
              "mask to the exact truth, by how the model's 128 px output is put back into the image "
              "(the service: F = 12 for remove, all detail for add):", "",
              "| put back as | remove: PSNR inside the mask (dB) | add: PSNR inside the mask (dB) |", "|---|---|---|"]
    for v, vals in masked.items():
        lines.append(f"| {v} | {statistics.mean(x[0] for x in vals):.2f} | {statistics.mean(x[1] for x in vals):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
