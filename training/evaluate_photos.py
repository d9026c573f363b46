"""`dermagan evaluate --data DIR`: the metrics of `evaluate.py` on a user's held-out photographs.

Real photographs have no exact counterpart (the same skin with and without its eczema), so every
metric that needs one is left out (remove's inside-mask PSNR against the truth and its inpainting
baselines; add's inside-mask comparison); their targets read n/a. What is measured:

- segment: IoU / Dice against the folder's masks on its eczema images, positive area on its healthy ones;
- add: healthy images with the masks of eczema images -- PSNR / SSIM outside the mask (raw output vs
  input), the segmenter's IoU on the composite against the mask and relative to its IoU on the real
  eczema, KID / Fréchet distance of the composites to the real eczema images;
- remove: eczema images with their masks -- outside PSNR / SSIM, segmenter-positive area before and
  after, KID / FD of the composites to the healthy images;
- cycle-add / cycle-remove: the segmenter-positive area before and after, the share of images whose area
  moved the requested way, the cycle reconstruction through the opposite model;
- generate, per label: the distribution metrics against the folder's images of the class of that name
  (a flat folder or the paper layout: all its images, for a one-label generator), the floor from two
  disjoint halves of them (at least 12 images of a class, or it is skipped). The copy rate needs the
  training images and is left out.

Folders as `dermagan train --data` reads them (training/data.py): the paper's layout (image/, patho/; healthy
skin = images with an empty mask + healthy/) for the edit models and the segmenter; class folders, a
HAM10000 / ISIC labels CSV or a flat folder for generators; `--patches SHORT_PX` cuts the edit models' and
the segmenter's images into patches as `dermagan train --patches` does. Evaluation seed s draws its subset
of at most `--n` images (or patches) per set with numpy's generator seeded s (all when there are fewer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dermagan.training import data as folders
from dermagan.training.evaluate import Context, OnnxModel, composite, distribution_metrics, from_model, mask_to_model, to_model
from dermagan.training.metrics import frechet, kid, pixel, segmentation


#: Two halves of more than density/coverage's k = 5 neighbours each.
MIN_CLASS_IMAGES = 12


def _uint8(t: torch.Tensor) -> np.ndarray:
    """A dataset's image [3, H, W] in [-1, 1] (x / 127.5 - 1, exactly) -> uint8 [H, W, 3]."""
    return ((t.numpy().transpose(1, 2, 0) + 1.0) * 127.5).round().astype(np.uint8)


class Photos:
    """A held-out folder, its images loaded at one size per task, in subsets by evaluation seed."""

    def __init__(self, root: Path, n: int, patches_from: int = 0, fit: str = "") -> None:
        self.root, self.n, self.patches_from, self.fit = Path(root), n, patches_from, fit
        self.paper = (self.root / "image").is_dir() and (self.root / "patho").is_dir()
        self._cache: dict = {}

    def _pick(self, count: int, seed: int, salt: int) -> list[int]:
        if count <= self.n:
            return list(range(count))
        return sorted(np.random.default_rng([seed, salt]).choice(count, self.n, replace=False).tolist())

    def eczema_sets(self, size: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({"image", "mask"} of eczema images, healthy images), at size x size."""
        if not self.paper:
            raise ValueError(f"{self.root}: the edit models and the segmenter need the paper's layout (image/, patho/)")
        key = ("eczema", size, seed)
        if key not in self._cache:
            if ("pools", size) not in self._cache:  # scanning decodes every mask: once per size
                self._cache["pools", size] = folders.UnpairedFolder(self.root, size=size, patches_from=self.patches_from,
                                                                         fit=self.fit)
            ds = self._cache["pools", size]
            ecz = [ds.load_eczema(i) for i in self._pick(len(ds.eczema), seed, 1)]
            healthy = np.stack([_uint8(ds.load_healthy(i)) for i in self._pick(len(ds.healthy), seed, 2)])
            self._cache[key] = ({"image": np.stack([_uint8(e["image"]) for e in ecz]),
                                 "mask": np.stack([e["mask"][0].numpy() > 0.5 for e in ecz])}, healthy)
        return self._cache[key]

    def classes(self, size: int) -> dict[str, np.ndarray]:
        """Upper-cased class name -> every image of it at size x size (the paper layout and a flat folder:
        one class, "*")."""
        key = ("classes", size)
        if key not in self._cache:
            if self.paper:
                images = folders.ImageFolder(self.root / "image", size=size, fit=self.fit)
                self._cache[key] = {"*": np.stack([_uint8(images[i]["image"]) for i in range(len(images))])}
            else:
                from dermagan.training.sources import generator_folder

                ds, names = generator_folder(self.root, size, self.fit)
                by: dict[str, list[np.ndarray]] = {}
                for i in range(len(ds)):  # type: ignore[arg-type]
                    item = ds[i]
                    by.setdefault(names[int(item["label"])].upper() if len(names) > 1 else "*", []).append(_uint8(item["image"]))
                self._cache[key] = {k: np.stack(v) for k, v in by.items()}
        return self._cache[key]


def eval_generate(ctx: Context, model: OnnxModel, seed: int, photos: Photos) -> dict[str, float]:
    e = model.entry
    rng = np.random.default_rng([seed, 20201])
    out: dict[str, float] = {}
    for label_id, kind in enumerate(e.labels):
        size = model.size(ctx.size)
        classes = photos.classes(size)
        real = classes.get(kind.upper(), classes.get("*") if len(e.labels) == 1 else None)
        if real is None or len(real) < MIN_CLASS_IMAGES:
            ctx.log(f"    {e.name}: {0 if real is None else len(real)} images of class {kind!r} in {photos.root} "
                    f"(classes: {sorted(classes)}; {MIN_CLASS_IMAGES} needed); skipped")
            continue
        order = np.random.default_rng([seed, 3]).permutation(len(real))
        half = min(len(real) // 2, photos.n)
        real_a, real_b = real[order[:half]], real[order[half:2 * half]]
        z = rng.standard_normal((half, e.z_dim or 0)).astype(np.float32)
        fake = from_model(model(z=z, label=np.full(half, label_id, np.int64)))
        out.update(distribution_metrics(ctx, kind, real_a, real_b, fake, None, seed))
    return out


def eval_segment(ctx: Context, model: OnnxModel, seed: int, photos: Photos) -> dict[str, float]:
    from dermagan.training.evaluate import Segmenter

    d, healthy = photos.eczema_sets(model.size(ctx.size), seed)
    seg = Segmenter(model)
    pred = seg(d["image"])
    inter = np.logical_and(pred, d["mask"]).sum((1, 2))
    dice = 2 * inter / np.maximum(pred.sum((1, 2)) + d["mask"].sum((1, 2)), 1)
    return {"eczema.iou": segmentation.mean_iou(pred, d["mask"]), "eczema.dice": float(dice.mean()),
            "healthy.positive_fraction": segmentation.positive_fraction(seg(healthy))}


def _realism(ctx: Context, real: np.ndarray, edited: np.ndarray, seed: int) -> dict[str, float]:
    out = {}
    for space, fx in ctx.spaces.items():
        fr, fe = fx.features(real), fx.features(edited)
        out[f"realism.kid.{space}"] = kid.kid(fr, fe, seed=seed)[0]
        out[f"realism.fd.{space}"] = frechet.frechet_distance(fr, fe)
    return out


def eval_add(ctx: Context, model: OnnxModel, seed: int, photos: Photos) -> dict[str, float]:
    d, healthy = photos.eczema_sets(model.size(ctx.size), seed)
    m = min(len(healthy), len(d["mask"]))
    src, masks = healthy[:m], d["mask"][:m]
    raw = from_model(model(image=to_model(src), mask=mask_to_model(masks)))
    comp = composite(raw, src, masks)
    out = {f"outside.{k}": v for k, v in pixel.batch_pixel_metrics(src, raw, masks, outside=True, names=("psnr", "ssim")).items()}
    if ctx.segmenter is not None:
        real_iou = segmentation.mean_iou(ctx.segmenter(d["image"]), d["mask"])
        add_iou = segmentation.mean_iou(ctx.segmenter(comp), masks)
        out.update({"segment.iou_real": real_iou, "segment.iou": add_iou,
                    "segment.iou_relative": add_iou / real_iou if real_iou > 0 else float("nan")})
    out.update(_realism(ctx, d["image"], comp, seed))
    return out


def eval_remove(ctx: Context, model: OnnxModel, seed: int, photos: Photos) -> dict[str, float]:
    d, healthy = photos.eczema_sets(model.size(ctx.size), seed)
    raw = from_model(model(image=to_model(d["image"]), mask=mask_to_model(d["mask"])))
    comp = composite(raw, d["image"], d["mask"])
    out = {f"outside.{k}": v for k, v in pixel.batch_pixel_metrics(d["image"], raw, d["mask"], outside=True,
                                                                    names=("psnr", "ssim")).items()}
    if ctx.segmenter is not None:
        before, after = ctx.segmenter(d["image"]), ctx.segmenter(comp)
        out.update({"segment.positive_before": segmentation.positive_fraction(before),
                    "segment.positive_after": segmentation.positive_fraction(after),
                    "segment.area_reduction": segmentation.area_reduction(before, after)})
    out.update(_realism(ctx, healthy, comp, seed))
    return out


def eval_cycle(ctx: Context, model: OnnxModel, seed: int, photos: Photos) -> dict[str, float]:
    adding = model.entry.task == "cycle-add"
    d, healthy = photos.eczema_sets(model.size(ctx.size), seed)
    src, target = (healthy, d["image"]) if adding else (d["image"], healthy)
    moved = from_model(model(image=to_model(src)))
    out: dict[str, float] = {}
    if ctx.segmenter is not None:
        before, after = ctx.segmenter(src).mean((1, 2)), ctx.segmenter(moved).mean((1, 2))
        sign = 1.0 if adding else -1.0
        out.update({"segment.positive_before": float(before.mean()), "segment.positive_after": float(after.mean()),
                    "direction.moved_share": float((sign * (after - before) > 0).mean())})
    partner = ctx.partners.get("cycle-remove" if adding else "cycle-add")
    if partner is not None:
        back = from_model(partner(image=to_model(moved)))
        out.update({f"cycle.{k}": v for k, v in pixel.batch_pixel_metrics(src, back, names=("psnr", "ssim")).items()})
    out.update(_realism(ctx, target, moved, seed))
    return out


#: task -> evaluator(ctx, model, seed, photos). Explicit registry, as evaluate.EVALUATORS.
EVALUATORS: dict[str, Callable[[Context, OnnxModel, int, Photos], dict[str, float]]] = {
    "generate": eval_generate, "add": eval_add, "remove": eval_remove,
    "cycle-add": eval_cycle, "cycle-remove": eval_cycle, "segment": eval_segment,
}
