"""`dermagan gallery`: picture grids of what the shipped models do, for docs/.

    dermagan gallery [--models models/] [--out docs/gallery] [--n 6] [--size 128]

Writes, from the ONNX models of a manifest and held-out procedural data (renderer seeds >= 2·10^9,
disjoint from training and evaluation):
- `generate-KIND.png`: n generated images per kind (seeded noise);
- `add.png` / `remove.png`: rows of input | mask | raw output | composite (what the service returns) |
  the renderer's exact target;
- `cycle.png`: healthy | cycle-add | eczema | cycle-remove;
- `segment.png`: image | true mask | predicted mask;
and `index.md`, a page that shows them all. A task's first model (the one that serves it unnamed) gets
the task's file; another model of the task gets `TASK-NAME.png`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dermagan.manifest import Manifest, ModelEntry, load_manifest, most_specific
from dermagan.training.checkout import INSTALLED_NOTE, checkout_path, default_or_required
from dermagan.training.evaluate import OnnxModel, composite, from_model, mask_to_model, to_model

GALLERY_SEED_BASE = 2 * 10**9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, **default_or_required("models"),
                   help=f"folder with manifest.json (default: the checkout's models/; {INSTALLED_NOTE})")
    p.add_argument("--out", type=Path, **default_or_required("docs", "gallery"),
                   help=f"where to write the PNGs and index.md (default: the checkout's docs/gallery/; {INSTALLED_NOTE})")
    p.add_argument("--n", type=int, default=6, help="examples per grid (default 6)")
    p.add_argument("--size", type=int, default=128, help="pixels of the held-out images (default 128)")


def grid(rows: list[list[np.ndarray]], header: list[str], pad: int = 2) -> Image.Image:
    """uint8 HxWx3 tiles (masks may be HxW) in rows, with a text header."""
    h, w = rows[0][0].shape[:2]
    top = 14
    sheet = Image.new("RGB", (len(header) * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(header):
        draw.text((pad + j * (w + pad) + 2, 1), text, fill="black")
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            tile = np.repeat(tile[..., None], 3, axis=2) if tile.ndim == 2 else tile
            sheet.paste(Image.fromarray(tile), (pad + j * (w + pad), top + pad + i * (h + pad)))
    return sheet


def eczema_samples(n: int, size: int, first_seed: int) -> list:
    from dermagan.training.synth import render

    out, seed = [], first_seed
    while len(out) < n:
        s = render("eczema", seed, size=size)
        seed += 1
        if s.mask is not None and (s.mask > 0).mean() > 0.03:
            out.append(s)
    return out


def _file(task: str, entry: ModelEntry, first: ModelEntry) -> str:
    """The task's grid for the model that serves it unnamed, TASK-NAME.png for another of its models."""
    return f"{task}.png" if entry is first else f"{task}-{entry.name}.png"


def _check(args: argparse.Namespace, manifest: Manifest) -> None:
    """Options the models cannot take, named before any work is done."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    for entry in manifest.models:
        if entry.task == "generate":
            continue
        h, w = entry.resolution
        if entry.dynamic_hw and (args.size < entry.size_multiple or args.size % entry.size_multiple):
            raise ValueError(f"--size {args.size}: {entry.name} takes multiples of {entry.size_multiple} px")
        if not entry.dynamic_hw and (h, w) != (args.size, args.size):
            raise ValueError(f"--size {args.size}: {entry.name} takes {h}x{w} images only")


def run(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.models)
        _check(args, manifest)
    except (ValueError, FileNotFoundError) as e:  # ManifestError is a ValueError
        print(f"dermagan gallery: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    samples = eczema_samples(args.n, args.size, GALLERY_SEED_BASE)
    images = np.stack([s.image for s in samples])
    healthy = np.stack([s.healthy for s in samples])
    masks = np.stack([s.mask > 0 for s in samples])
    shown: list[tuple[str, str]] = []

    generators = manifest.by_task("generate")
    for kind in dict.fromkeys(k for e in generators for k in e.labels):  # each kind from the model serving it
        entry = most_specific(generators, kind)
        assert entry is not None
        model, label_id = OnnxModel(args.models, entry), entry.labels.index(kind)
        # a generator's label k gets the k-th block of noise from the gallery's seed
        z = np.random.default_rng(GALLERY_SEED_BASE).standard_normal((label_id + 1, args.n * 2, entry.z_dim or 1))[-1]
        out = from_model(model(z=z.astype(np.float32), label=np.full(len(z), label_id, np.int64)))
        path = args.out / f"generate-{kind}.png"
        grid([list(out[: args.n]), list(out[args.n:])], [f"{kind} #{i}" for i in range(args.n)]).save(path)
        shown.append((f"{entry.name}: {kind}", path.name))

    for task, source, target in (("add", healthy, images), ("remove", images, healthy)):
        entries = manifest.by_task(task)
        for entry in entries:
            raw = from_model(OnnxModel(args.models, entry)(image=to_model(source), mask=mask_to_model(masks)))
            comp = composite(raw, source, masks)
            rows = [[source[i], (masks[i] * 255).astype(np.uint8), raw[i], comp[i], target[i]] for i in range(args.n)]
            path = args.out / _file(task, entry, entries[0])
            grid(rows, ["input", "mask", "raw output", "composite", "exact target"]).save(path)
            shown.append((f"{entry.name}: {task} eczema inside the mask", path.name))

    cyc_add, cyc_rem = manifest.by_task("cycle-add"), manifest.by_task("cycle-remove")
    if cyc_add or cyc_rem:
        blank = np.full_like(images, 255)
        added = from_model(OnnxModel(args.models, cyc_add[0])(image=to_model(healthy))) if cyc_add else blank
        removed = from_model(OnnxModel(args.models, cyc_rem[0])(image=to_model(images))) if cyc_rem else blank
        rows = [[healthy[i], added[i], images[i], removed[i]] for i in range(args.n)]
        path = args.out / "cycle.png"
        grid(rows, ["healthy", "cycle-add", "eczema", "cycle-remove"]).save(path)
        shown.append(("CycleGAN: add and remove eczema without a mask", path.name))

    segmenters = manifest.by_task("segment")
    for entry in segmenters:
        logits = OnnxModel(args.models, entry)(image=to_model(images))[:, 0]
        rows = [[images[i], (masks[i] * 255).astype(np.uint8), ((logits[i] > 0) * 255).astype(np.uint8)]
                for i in range(args.n)]
        path = args.out / _file("segment", entry, segmenters[0])
        grid(rows, ["image", "true mask", "predicted"]).save(path)
        shown.append((f"{entry.name}: segmentation", path.name))

    shipped_dir = checkout_path("models")  # (an installed package has none)
    shipped = shipped_dir is not None and args.models.resolve() == shipped_dir.resolve()
    lines = ["# Gallery of the shipped models" if shipped else f"# Gallery of the models in {args.models}", "",
             f"Made by `dermagan gallery --models {args.models.name}` from the ONNX files of the manifest, on held-out "
             f"procedural images (renderer seeds from {GALLERY_SEED_BASE:.0e}). All images are synthetic.", ""]
    for title, name in shown:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    (args.out / "index.md").write_text("\n".join(lines), encoding="utf-8")
    for _, name in shown:
        print(args.out / name)
    return 0
