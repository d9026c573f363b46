"""`dermagan evaluate`: offline quality metrics of the exported models of a manifest.

    dermagan evaluate [--models models/] --out DIR [--n 500] [--seeds 2] [--size 128]

Loads every model of `models/manifest.json` with plain onnxruntime (numpy x/127.5 - 1 in, the
manifest's tensor contract; nothing of service/ is used), draws held-out procedural data, computes
each metric that applies to the model's task (training/metrics/), repeats for `--seeds` evaluation
seeds and writes DIR/metrics.json (every value per seed, mean, std, targets) and DIR/metrics.md (one
table per model, with the targets of issue 5 and pass/miss).

Data split (renderer seeds; the renderer is deterministic by (version, kind, seed, size)):
- model training data: seeds [0, 10^6) -- `SynthDataset(seed=0)` renders sample i from seed i (a
  multi-kind generator's kind j from seeds j, j + K, j + 2K, ...);
- the in-project feature extractor: seeds [5·10^8, 5·10^8 + per_kind) (feature_training.py);
- evaluation seed s: seeds [10^9 + s·10^7, 10^9 + (s+1)·10^7): set A from its start, set B (the second
  real set of every real-vs-real floor) from its start + 5·10^6. Eczema sets keep only samples whose
  mask is non-empty, so they may skip a few seeds. `--split test` (the default, what cards report)
  takes s = 0, 1, ...; `--split validation` takes s = 100, 101, ... (renderer seeds from 2·10^9): a
  split for choosing among checkpoints (`dermagan release`) that the reported numbers never see.
The copy rate compares generated images with the first `--n` training seeds (a subset of what the
generator saw: a lower bound on memorisation); its floor is held-out real data vs the same subset.

What each task gets (keys are GROUP.METRIC[.SPACE]; SPACE = inproj | random; X_floor = real-vs-real):
- generate, per label: kid, fd, density, coverage, c2st, copy_rate in both spaces, with floors (the
  copy-rate target uses the random space: the classifier's features ignore within-class detail);
- add (healthy + requested mask of held-out eczema samples): psnr/ssim outside the mask (raw output vs
  input), inside vs the renderer's eczema (information only), segmenter IoU on the composite vs the
  mask and relative to the segmenter's IoU on real eczema, kid/fd of composites vs real eczema;
- remove: psnr/ssim/l1 inside the mask vs the exact healthy ground truth, the same for every classical
  inpainting baseline and for doing nothing, segmenter-positive area before/after;
- cycle-add / cycle-remove: by the in-project classifier's eczema-vs-healthy logit, the share now
  classified as the requested class (the target) and the share whose logit merely moved that way;
  cycle-reconstruction psnr/ssim through the opposite cycle model when the manifest has one;
- segment: IoU / Dice on held-out eczema, positive area on healthy skin.

`--data DIR` evaluates on a user's held-out photographs instead (training/evaluate_photos.py): the same
report, without the metrics that need an exact counterpart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dermagan.manifest import KINDS, Manifest, ModelEntry, load_manifest
from dermagan.training.checkout import INSTALLED_NOTE, checkout_path, default_or_required
from dermagan.training.metrics import c2st, frechet, kid, memorisation, pixel, prdc, segmentation
from dermagan.training.metrics.features import Extractor, load_extractor, random_extractor
from dermagan.training.metrics.report import json_safe, render_markdown, summarise, targets_for

TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 10**9
SEED_STRIDE = 10**7
REFERENCE_OFFSET = 5 * 10**6
#: the fewest samples per set: density and coverage need more than their k = 5 neighbours
MIN_N = 6
#: the first evaluation seed of each split: the test split's seeds stay below the validation's
SPLITS = {"test": 0, "validation": 100}
EXTRACTOR_FILE = "feature-extractor.onnx"
#: the feature space of the shipped model cards (the checkout's models/; an installed package has none)
SHIPPED_MODELS = checkout_path("models")
SHIPPED_EXTRACTOR = SHIPPED_MODELS / EXTRACTOR_FILE if SHIPPED_MODELS is not None else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, **default_or_required("models"),
                   help=f"folder with manifest.json and the ONNX files (default: the shipped models/; {INSTALLED_NOTE})")
    p.add_argument("--out", type=Path, required=True, help="folder to write metrics.json and metrics.md into")
    p.add_argument("--n", type=int, default=500, help="samples per set (generated, real A, real B) and seed (default 500; the model cards use 200)")
    p.add_argument("--seeds", type=int, default=2, help="evaluation seeds; every metric is reported as mean and std over them")
    p.add_argument("--split", choices=tuple(SPLITS), default="test",
                   help="held-out data: test (reported in cards) or validation (for choosing checkpoints)")
    p.add_argument("--size", type=int, default=None,
                   help="pixels of the held-out images for models with dynamic H, W (default: each model's own "
                        "resolution, the size it was trained at; the shipped models' is 128)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="evaluate only these models of the manifest")
    p.add_argument("--extractor", type=Path, help=f"in-project feature extractor (ONNX); default MODELS/{EXTRACTOR_FILE}, "
                   f"else OUT/{EXTRACTOR_FILE}, else the shipped models' (the model cards' feature space), else one is "
                   "trained (a few minutes) and saved in OUT")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random-init feature network")
    p.add_argument("--baseline-n", type=int, help="remove: images per seed for the classical inpainting "
                   "baselines (and the model's matched numbers); default all --n")
    p.add_argument("--batch", type=int, default=16, help="ONNX Runtime batch size")
    p.add_argument("--workers", type=int, default=2, help="processes that render the held-out data (1 = in-process)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="your held-out photographs instead of the procedural data (the layouts of dermagan train "
                        "--data): metrics that need an exact counterpart are left out (training/evaluate_photos.py)")
    p.add_argument("--segmenter", type=Path, default=None, metavar="DIR",
                   help="a models folder whose manifest holds the segmenter to measure add / remove / the CycleGAN "
                        "with, when MODELS has none (or another one: this one wins); e.g. the one you trained on "
                        "your photographs, or the shipped models/ for procedural data")
    p.add_argument("--fit", choices=("squash", "crop"), default="",
                   help="with --data: bring photographs of another shape to the model's as `dermagan train --fit` "
                        "does (the way the models were trained); unset: squash, with a warning")
    p.add_argument("--patches", type=int, default=0, metavar="SHORT_PX",
                   help="with --data: evaluate on patches cut as `dermagan train --patches` cuts them (edit models, "
                        "segmenter); 0 = whole images")


# ---------------------------------------------------------------- models (plain ORT + numpy)

def to_model(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


def from_model(x: np.ndarray) -> np.ndarray:
    """float32 [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return np.clip(np.round((x.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def mask_to_model(masks: np.ndarray) -> np.ndarray:
    """bool/uint8 [N, H, W] -> float32 [N, 1, H, W] in {0, 1}."""
    return (np.asarray(masks) > 0).astype(np.float32)[:, None]


def composite(output: np.ndarray, original: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The output inside the (hard) mask, the original pixels outside -- what a user receives."""
    return np.where(np.asarray(masks)[..., None] > 0, output, original)


class OnnxModel:
    """One manifest entry in an ORT session; `__call__(**inputs)` runs it in batches."""

    def __init__(self, models_dir: Path, entry: ModelEntry, batch: int = 16) -> None:
        import onnxruntime as ort

        self.entry, self.batch = entry, batch
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(models_dir / entry.file), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def size(self, requested: int | None) -> int:
        """The square image size to feed: `requested` (rounded to size_multiple) if dynamic, else the resolution;
        no `requested` (--size not given): the resolution it was trained at (a 32 px model was fed 128 px images,
        and a folder's photographs squashed to 128 for it, while --size defaulted to 128)."""
        h, w = self.entry.resolution
        if not self.entry.dynamic_hw or requested is None:
            if h != w:
                raise ValueError(f"{self.entry.name}: evaluate needs square images, the model is "
                                 f"{'fixed' if not self.entry.dynamic_hw else 'trained'} at {h}x{w}"
                                 + ("" if not self.entry.dynamic_hw else "; give --size"))
            return h
        m = self.entry.size_multiple
        return max(m, requested // m * m)

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        feeds = {k: v for k, v in inputs.items() if k in self.input_names}
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise ValueError(f"{self.entry.name}: no value for inputs {sorted(missing)}")
        n = len(next(iter(feeds.values())))
        outs = [self.session.run([self.output_name], {k: v[i:i + self.batch] for k, v in feeds.items()})[0]
                for i in range(0, n, self.batch)]
        return np.concatenate(outs)


class Segmenter:
    """A `segment` model as images uint8 [N, H, W, 3] -> bool masks [N, H, W] (logits > 0)."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model

    def __call__(self, images: np.ndarray) -> np.ndarray:
        h, w = images.shape[1:3]
        s = self.model.size(h)
        x = images if s == h else np.stack([np.asarray(Image.fromarray(im).resize((s, s), Image.BILINEAR)) for im in images])
        pos = self.model(image=to_model(x))[:, 0] > 0  # (N, s, s)
        if s != h:
            pos = np.stack([np.asarray(Image.fromarray(p.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0 for p in pos])
        return pos


# ---------------------------------------------------------------- held-out data

def _render_one(render: Callable, kind: str, size: int, seed: int):
    return render(kind, seed, size=size)


@dataclass
class HeldOut:
    """Rendered sets, cached by (kind, first seed, n, size, need_mask); `pool` renders in parallel."""

    render: Callable
    pool: Executor | None = None
    cache: dict = field(default_factory=dict)

    def _render_many(self, kind: str, seeds: range | list[int], size: int) -> list:
        if self.pool is None:
            return [self.render(kind, s, size=size) for s in seeds]
        return list(self.pool.map(partial(_render_one, self.render, kind, size), seeds, chunksize=8))

    def draw(self, kind: str, first_seed: int, n: int, size: int, need_mask: bool = False,
             stride: int = 1) -> dict[str, np.ndarray]:
        """n samples of `kind` from seeds first_seed, first_seed + stride, ... (need_mask: skip empty masks)."""
        key = (kind, first_seed, n, size, need_mask, stride)
        if key not in self.cache:
            samples, seed = [], first_seed
            while len(samples) < n:
                if seed - first_seed > stride * (10 * n + 100):
                    raise RuntimeError(f"the renderer gave fewer than {n} {kind} samples with a lesion in "
                                       f"{(seed - first_seed) // stride} seeds")
                want = max(1, (n - len(samples)) * (5 if need_mask else 4) // 4)  # +25 % for empty masks
                todo = range(seed, seed + want * stride, stride)
                seed = todo.stop
                samples += [s for s in self._render_many(kind, todo, size)
                            if not need_mask or (s.mask is not None and (s.mask > 0).any())]
            samples = samples[:n]
            self.cache[key] = {
                "image": np.stack([s.image for s in samples]),
                "healthy": np.stack([s.image if s.healthy is None else s.healthy for s in samples]),
                "mask": np.stack([np.zeros(s.image.shape[:2], bool) if s.mask is None else s.mask > 0 for s in samples]),
            }
        return self.cache[key]


def split_seeds(split: str, count: int) -> list[int]:
    """The evaluation seeds of `split`; the test split's `count` must stay clear of the validation's."""
    first = SPLITS[split]
    if not 1 <= count <= SPLITS["validation"]:
        raise ValueError(f"--seeds must be within 1..{SPLITS['validation']}, got {count}")
    return list(range(first, first + count))


def eval_seed_base(seed: int) -> int:
    return EVAL_SEED_BASE + seed * SEED_STRIDE


# ---------------------------------------------------------------- per-task evaluators

@dataclass
class Context:
    models_dir: Path
    spaces: dict[str, Extractor]  # "inproj" (trained, has classes) and "random"
    data: HeldOut
    n: int
    size: int
    batch: int = 16
    baseline_n: int | None = None
    partners: dict[str, OnnxModel] = field(default_factory=dict)  # task -> first model of that task
    segmenter: Segmenter | None = None
    log: Callable[[str], None] = print


def distribution_metrics(ctx: Context, group: str, real_a: np.ndarray, real_b: np.ndarray, fake: np.ndarray,
                         train: np.ndarray | None = None, seed: int = 0) -> dict[str, float]:
    """Every distribution metric of `fake` vs `real_a` in every feature space, each with its floor
    (the same metric of `real_b` vs `real_a`: two independent real sets of the same size)."""
    out: dict[str, float] = {}
    for space, ex in ctx.spaces.items():
        fa, fb, ff = ex.features(real_a), ex.features(real_b), ex.features(fake)
        for name, other in (("", ff), ("_floor", fb)):
            # Subsets of half the set, so the std over subsets measures sampling noise.
            k_mean, k_std = kid.kid(fa, other, num_subsets=50, seed=seed, max_subset_size=max(2, len(fa) // 2))
            out[f"{group}.kid{name}.{space}"] = k_mean
            if name:  # the unbiased floor can be <= 0: its noise scale stands in for it in the target
                out[f"{group}.kid_floor_scale.{space}"] = max(k_mean, k_std)
            out[f"{group}.fd{name}.{space}"] = frechet.frechet_distance(fa, other)
            dens, cov = prdc.density_coverage(fa, other, k=5)
            out[f"{group}.density{name}.{space}"], out[f"{group}.coverage{name}.{space}"] = dens, cov
            out[f"{group}.c2st{name}.{space}"] = c2st.c2st_accuracy(fa, other, seed=seed)
        if train is not None:
            ft = ex.features(train)
            out[f"{group}.copy_rate.{space}"] = memorisation.copy_rate(ft, ff)
            out[f"{group}.copy_rate_floor.{space}"] = memorisation.copy_rate(ft, fa)
    return out


def rendered_labels(entry: ModelEntry) -> tuple[list[str], list[str]]:
    """(the generator's labels the renderer draws, those it does not). A generator trained on one's own
    images (`dermagan train generate --data`) draws its class names ("MEL", "akiec"): nothing procedural
    is their held-out counterpart, so they are skipped here (`--data DIR` evaluates them on photographs)."""
    return [k for k in entry.labels if k in KINDS], [k for k in entry.labels if k not in KINDS]


def eval_generate(ctx: Context, model: OnnxModel, seed: int) -> dict[str, float]:
    e = model.entry
    rng = np.random.default_rng([seed, 20201])
    out: dict[str, float] = {}
    for label_id, kind in enumerate(e.labels):
        if kind not in KINDS:  # (rendered_labels; _evaluate says so once)
            continue
        z = rng.standard_normal((ctx.n, e.z_dim)).astype(np.float32)
        fake = from_model(model(z=z, label=np.full(ctx.n, label_id, np.int64)))
        size = fake.shape[1]
        base = eval_seed_base(seed)
        real_a = ctx.data.draw(kind, base, ctx.n, size)["image"]
        real_b = ctx.data.draw(kind, base + REFERENCE_OFFSET, ctx.n, size)["image"]
        # SynthDataset(kinds, seed=0) renders sample i as kind kinds[i % K] from seed i
        k = len(e.labels)
        train = ctx.data.draw(kind, TRAIN_SEED_BASE + label_id, ctx.n, size, stride=k)["image"]
        out.update(distribution_metrics(ctx, kind, real_a, real_b, fake, train, seed))
    return out


def _eczema_sets(ctx: Context, model: OnnxModel, seed: int) -> tuple[dict, dict]:
    size = model.size(ctx.size)
    base = eval_seed_base(seed)
    return (ctx.data.draw("eczema", base, ctx.n, size, need_mask=True),
            ctx.data.draw("eczema", base + REFERENCE_OFFSET, ctx.n, size, need_mask=True))


#: how much of the tint `tint_baseline` lays over healthy skin
TINT_ALPHA = 0.35


def tint_baseline(healthy: np.ndarray, masks: np.ndarray, eczema: np.ndarray, eczema_masks: np.ndarray) -> np.ndarray:
    """Add's trivial baseline: each healthy image with its mask blended (TINT_ALPHA) towards the mean colour of
    real eczema (the pixels inside `eczema_masks` of `eczema`, an independent set: no image's own truth). A flat
    pink tint met both of add's targets (relative mask IoU 1.07-1.10, outside untouched) while no model drew
    anything (2026-12-08); this tint's numbers beside the model's say what the model adds over one (the shipped
    eczema-add, n 100: inside PSNR 26.3 against the tint's 23.5 dB, relative mask IoU 1.07 against 0.51)."""
    colour = eczema[eczema_masks.astype(bool)].reshape(-1, 3).mean(axis=0)
    m = masks.astype(np.float32)[..., None] * TINT_ALPHA
    return np.clip(np.rint(healthy * (1 - m) + colour * m), 0, 255).astype(np.uint8)


def eval_add(ctx: Context, model: OnnxModel, seed: int) -> dict[str, float]:
    d, ref = _eczema_sets(ctx, model, seed)
    raw = from_model(model(image=to_model(d["healthy"]), mask=mask_to_model(d["mask"])))
    comp = composite(raw, d["healthy"], d["mask"])
    out = {f"outside.{k}": v for k, v in pixel.batch_pixel_metrics(d["healthy"], raw, d["mask"], outside=True,
                                                                    names=("psnr", "ssim")).items()}
    out.update({f"inside_vs_truth.{k}": v for k, v in pixel.batch_pixel_metrics(d["image"], comp, d["mask"]).items()})
    # the baseline a model must beat: no model, the mask filled with a flat tint of real eczema's mean colour
    tinted = tint_baseline(d["healthy"], d["mask"], ref["image"], ref["mask"])
    out.update({f"inside_vs_truth.{k}.tint": v for k, v in pixel.batch_pixel_metrics(d["image"], tinted, d["mask"]).items()})
    if ctx.segmenter is not None:
        real_iou = segmentation.mean_iou(ctx.segmenter(d["image"]), d["mask"])
        add_iou = segmentation.mean_iou(ctx.segmenter(comp), d["mask"])
        out.update({"segment.iou_real": real_iou, "segment.iou": add_iou,
                    "segment.iou_relative": add_iou / real_iou if real_iou > 0 else float("nan")})
        tint_iou = segmentation.mean_iou(ctx.segmenter(tinted), d["mask"])
        out["segment.iou_relative.tint"] = tint_iou / real_iou if real_iou > 0 else float("nan")
    ex = ctx.spaces["inproj"]
    if ex.classes:
        out["eczema_score.share_eczema"] = float((ex.eczema_score(comp) > 0).mean())
        out["eczema_score.share_eczema_floor"] = float((ex.eczema_score(d["image"]) > 0).mean())
    for space, fx in ctx.spaces.items():
        fr, fc, fa = fx.features(ref["image"]), fx.features(comp), fx.features(d["image"])
        out[f"realism.kid.{space}"], out[f"realism.kid_floor.{space}"] = kid.kid(fr, fc, seed=seed)[0], kid.kid(fr, fa, seed=seed)[0]
        out[f"realism.fd.{space}"], out[f"realism.fd_floor.{space}"] = frechet.frechet_distance(fr, fc), frechet.frechet_distance(fr, fa)
    return out


def eval_remove(ctx: Context, model: OnnxModel, seed: int) -> dict[str, float]:
    d, _ = _eczema_sets(ctx, model, seed)
    raw = from_model(model(image=to_model(d["image"]), mask=mask_to_model(d["mask"])))
    comp = composite(raw, d["image"], d["mask"])
    out = {f"inside.{k}": v for k, v in pixel.batch_pixel_metrics(d["healthy"], comp, d["mask"]).items()}
    out.update({f"inside.{k}.unchanged": v for k, v in pixel.batch_pixel_metrics(d["healthy"], d["image"], d["mask"]).items()})
    out.update({f"outside.{k}": v for k, v in pixel.batch_pixel_metrics(d["image"], raw, d["mask"], outside=True,
                                                                          names=("psnr", "ssim")).items()})
    nb = min(ctx.baseline_n or ctx.n, ctx.n)
    if nb < ctx.n:  # the model's numbers on exactly the baseline's images
        out.update({f"inside.{k}.model_on_baseline_subset": v for k, v in
                    pixel.batch_pixel_metrics(d["healthy"][:nb], comp[:nb], d["mask"][:nb]).items()})
    for name, inpaint in pixel.available_inpainters().items():
        t0 = time.time()
        filled = np.stack([inpaint(d["image"][i], d["mask"][i]) for i in range(nb)])
        out.update({f"inside.{k}.{name}": v for k, v in
                    pixel.batch_pixel_metrics(d["healthy"][:nb], composite(filled, d["image"][:nb], d["mask"][:nb]),
                                              d["mask"][:nb]).items()})
        ctx.log(f"    baseline {name}: {nb} images in {time.time() - t0:.1f} s")
    if ctx.segmenter is not None:
        before, after = ctx.segmenter(d["image"]), ctx.segmenter(comp)
        out.update({"segment.positive_before": segmentation.positive_fraction(before),
                    "segment.positive_after": segmentation.positive_fraction(after),
                    "segment.area_reduction": segmentation.area_reduction(before, after)})
    ex = ctx.spaces["inproj"]
    if ex.classes:
        out["eczema_score.share_healthy"] = float((ex.eczema_score(comp) <= 0).mean())
        out["eczema_score.share_healthy_floor"] = float((ex.eczema_score(d["healthy"]) <= 0).mean())
    return out


def eval_cycle(ctx: Context, model: OnnxModel, seed: int) -> dict[str, float]:
    adding = model.entry.task == "cycle-add"
    d, _ = _eczema_sets(ctx, model, seed)
    src, truth = (d["healthy"], d["image"]) if adding else (d["image"], d["healthy"])
    moved = from_model(model(image=to_model(src)))
    out: dict[str, float] = {}
    ex = ctx.spaces["inproj"]
    if ex.classes:
        sign = 1.0 if adding else -1.0
        s_in, s_out = ex.eczema_score(src), ex.eczema_score(moved)
        out["direction.moved_share"] = float((sign * (s_out - s_in) > 0).mean())
        out["direction.target_share"] = float((sign * s_out > 0).mean())
        out["direction.target_share_floor"] = float((sign * ex.eczema_score(truth) > 0).mean())
    out.update({f"vs_truth.{k}": v for k, v in pixel.batch_pixel_metrics(truth, moved, names=("psnr", "ssim")).items()})
    partner = ctx.partners.get("cycle-remove" if adding else "cycle-add")
    if partner is not None:
        back = from_model(partner(image=to_model(moved)))
        out.update({f"cycle.{k}": v for k, v in pixel.batch_pixel_metrics(src, back, names=("psnr", "ssim")).items()})
    return out


def eval_segment(ctx: Context, model: OnnxModel, seed: int) -> dict[str, float]:
    d, _ = _eczema_sets(ctx, model, seed)
    seg = Segmenter(model)
    pred = seg(d["image"])
    inter = np.logical_and(pred, d["mask"]).sum((1, 2))
    dice = 2 * inter / np.maximum(pred.sum((1, 2)) + d["mask"].sum((1, 2)), 1)
    return {"eczema.iou": segmentation.mean_iou(pred, d["mask"]), "eczema.dice": float(dice.mean()),
            "healthy.positive_fraction": segmentation.positive_fraction(seg(d["healthy"]))}


#: task -> evaluator(ctx, model, seed) -> {metric key: value}. Explicit registry.
EVALUATORS: dict[str, Callable[[Context, OnnxModel, int], dict[str, float]]] = {
    "generate": eval_generate, "add": eval_add, "remove": eval_remove,
    "cycle-add": eval_cycle, "cycle-remove": eval_cycle, "segment": eval_segment,
}


# ---------------------------------------------------------------- the run

def resolve_extractor(args: argparse.Namespace, log: Callable[[str], None]) -> Extractor:
    for path in (args.extractor, args.models / EXTRACTOR_FILE, args.out / EXTRACTOR_FILE, SHIPPED_EXTRACTOR):
        if path is not None and path.is_file():
            if path == SHIPPED_EXTRACTOR and args.models.resolve() != path.parent:
                log(f"feature extractor: the shipped models' ({path}), the feature space of their cards")
            return load_extractor(path)
        if path is not None and path == args.extractor:
            raise FileNotFoundError(f"{path}: --extractor file not found")
    from dermagan.training.metrics import feature_training
    from dermagan.training.metrics.features import save_extractor

    cfg = feature_training.default()
    log(f"no {EXTRACTOR_FILE} in {args.models} or {args.out}: training the in-project feature extractor ({cfg})")
    net, classes, facts = feature_training.train_feature_net(cfg, log=log)
    path = save_extractor(net, args.out / EXTRACTOR_FILE, classes=classes, input_size=cfg.input_size, facts=facts)
    return load_extractor(path)


def evaluate(args: argparse.Namespace, *, render: Callable | None = None, extractor: Extractor | None = None,
             log: Callable[[str], None] = print, data: HeldOut | None = None) -> dict:
    """Evaluate every (selected) manifest model; returns the metrics.json document (and writes both files).
    `data`: held-out sets already rendered (several evaluations on the same split share them; its own
    renderer and pool then do the rendering, `render` and `args.workers` are not used)."""
    if render is None:
        from dermagan.training.synth import render
    manifest = load_manifest(args.models)
    entries = [m for m in manifest.models if not args.only or m.name in args.only]
    if args.only and (unknown := sorted(set(args.only) - {m.name for m in manifest.models})):
        raise ValueError(f"unknown models {unknown}; the manifest has {[m.name for m in manifest.models]}")
    split_seeds(args.split, args.seeds)  # before an extractor is trained
    if args.n < MIN_N:
        raise ValueError(f"--n must be at least {MIN_N} (density and coverage compare each image with its "
                         f"{MIN_N - 1} nearest neighbours), got {args.n}")
    if args.size is not None and args.size < 16:  # the renderer's smallest; 0 evaluated at the size multiple
        raise ValueError(f"--size must be at least 16, got {args.size}")
    if args.workers < 1 or args.batch < 1:
        raise ValueError(f"--workers and --batch must be at least 1, got {args.workers} and {args.batch}")
    if args.baseline_n is not None and args.baseline_n < 1:  # before, 0 meant all --n and -3 failed in np.stack
        raise ValueError(f"--baseline-n must be at least 1 (leave it out for all --n), got {args.baseline_n}")
    if args.random_seed < 0:
        raise ValueError(f"--random-seed must be >= 0, got {args.random_seed}")
    if args.data is not None and not args.data.exists():
        raise FileNotFoundError(f"{args.data}: no such folder (--data)")
    args.out.mkdir(parents=True, exist_ok=True)
    inproj = extractor or resolve_extractor(args, log)
    spaces = {"inproj": inproj, "random": random_extractor(args.random_seed, inproj.input_size)}
    if data is not None:
        return _evaluate(args, manifest, entries, spaces, data, log)
    pool = ProcessPoolExecutor(args.workers) if args.workers > 1 else None
    try:
        return _evaluate(args, manifest, entries, spaces, HeldOut(render, pool), log)
    finally:
        if pool is not None:
            pool.shutdown()


#: the tasks with metrics measured by a segmenter
SEGMENTER_METRICS = frozenset({"add", "remove", "cycle-add", "cycle-remove"})


def segmenter_model(folder: Path, batch: int) -> "OnnxModel":
    """The first segmenter of `folder`'s manifest (--segmenter), verified against its sha256."""
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"{folder}: no manifest.json (--segmenter names a models folder)")
    found = load_manifest(folder).by_task("segment")
    if not found:
        raise ValueError(f"{folder}: its manifest has no segment model (--segmenter)")
    return OnnxModel(folder, found[0], batch)


def _evaluate(args: argparse.Namespace, manifest: Manifest, entries: list[ModelEntry], spaces: dict[str, Extractor],
              data: HeldOut, log: Callable[[str], None]) -> dict:
    ctx = Context(args.models, spaces, data, args.n, args.size, args.batch, args.baseline_n, log=log)
    seeds = split_seeds(args.split, args.seeds)
    photos = None
    if args.data is not None:
        from dermagan.training import evaluate_photos

        photos = evaluate_photos.Photos(args.data, args.n, patches_from=args.patches, fit=args.fit)
    for task in ("cycle-add", "cycle-remove", "segment"):
        first = manifest.by_task(task)
        if first:
            ctx.partners[task] = OnnxModel(args.models, first[0], args.batch)
    segmenter_from = args.models
    if args.segmenter is not None:
        ctx.partners["segment"] = segmenter_model(args.segmenter, args.batch)
        segmenter_from = args.segmenter
    if "segment" in ctx.partners:
        ctx.segmenter = Segmenter(ctx.partners["segment"])
    elif any(e.task in SEGMENTER_METRICS for e in entries):
        log(f"no segmenter in {args.models}: the segmenter-based metrics of "
            f"{', '.join(sorted({e.task for e in entries if e.task in SEGMENTER_METRICS}))} are left out and their "
            "targets read n/a (--segmenter DIR names a models folder with one)")
    doc: dict = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"n": args.n, "seeds": args.seeds, "split": args.split, "size": args.size, "random_seed": args.random_seed,
                     "data": None if args.data is None else str(args.data), "patches": args.patches,
                     "fit": args.fit or "squash",
                     "segmenter": None if ctx.segmenter is None else {
                         "folder": str(segmenter_from), "name": ctx.partners["segment"].entry.name,
                         "sha256": ctx.partners["segment"].entry.sha256},
                     "baseline_n": args.baseline_n or args.n, "inpainting_baselines": sorted(pixel.available_inpainters())},
        "split": {"train_seeds": "[0, 1e6)" if photos is None else "the models' own (not seen here)",
                  "feature_extractor_seeds": "[5e8, 5e8 + per_kind)",
                  "eval_seeds": f"set A: [1e9 + s*1e7, ...), set B: + {REFERENCE_OFFSET:.0e}, "
                                f"s = {seeds[0]}..{seeds[-1]} ({args.split} split)" if photos is None else
                                f"your photographs in {args.data} (at most n per set, subset by seed "
                                f"s = {seeds[0]}..{seeds[-1]}; no exact counterparts: the metrics that need them are "
                                "left out)"},
        "feature_spaces": {k: {"name": v.name, "input_size": v.input_size, "classes": v.classes,
                               **{f: v.facts[f] for f in ("val_accuracy", "val_accuracy_unseen_seeds",
                                                          "n_val_unseen_seeds", "n_images", "seed") if f in v.facts}}
                           for k, v in spaces.items()},
        "models": {},
    }
    for entry in entries:
        model = OnnxModel(args.models, entry, args.batch)
        judged, skipped = rendered_labels(entry) if entry.task == "generate" and photos is None else (entry.labels, [])
        if skipped:
            log(f"  {entry.name}: {', '.join(skipped)} {'is not a kind' if len(skipped) == 1 else 'are not kinds'} "
                f"of the procedural renderer ({', '.join(KINDS)}): no held-out data to compare with, skipped "
                f"(--data DIR evaluates a generator of one's own classes on held-out photographs of them)")
        per_seed = []
        for seed in seeds:
            t0 = time.time()
            per_seed.append(EVALUATORS[entry.task](ctx, model, seed) if photos is None
                            else evaluate_photos.EVALUATORS[entry.task](ctx, model, seed, photos))
            log(f"  {entry.name} ({entry.task}) seed {seed}: {len(per_seed[-1])} metrics in {time.time() - t0:.1f} s")
        metrics = summarise(per_seed)
        means = {k: v["mean"] for k, v in metrics.items()}
        doc["models"][entry.name] = {"task": entry.task, "version": entry.version, "file": entry.file,
                                     "sha256": entry.sha256, "resolution": list(entry.resolution), "metrics": metrics,
                                     "targets": [t.check(means) for t in
                                                 targets_for(entry.model_copy(update={"labels": judged}))]}
        if skipped:
            doc["models"][entry.name]["skipped_labels"] = skipped
    (args.out / "metrics.json").write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.out / "metrics.md").write_text(render_markdown(doc), encoding="utf-8")
    return doc


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.time()
    try:
        doc = evaluate(args, log=log)
    except (ValueError, FileNotFoundError) as e:  # bad options, unknown models, a broken manifest
        print(f"dermagan evaluate: {e}", file=sys.stderr)
        return 2
    misses = sum(t["result"] == "miss" for m in doc["models"].values() for t in m["targets"])
    log(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.md'} "
        f"({len(doc['models'])} model{'' if len(doc['models']) == 1 else 's'}, "
        f"{misses} target{'' if misses == 1 else 's'} missed, {time.time() - t0:.0f} s)")
    # a model nothing could be measured of (its classes too small in --data, none a renderer kind): the run did not
    # do what was asked -- it exited 0 with a report of no numbers
    empty = [name for name, m in doc["models"].items() if not m["metrics"]]
    if empty:
        them = "it" if len(empty) == 1 else "them"
        log(f"dermagan evaluate: nothing measured for {', '.join(empty)}: no held-out data for {them} (the lines "
            "above say why: too few images of a class in --data, or no class the renderer draws)")
        return 1
    return 0
