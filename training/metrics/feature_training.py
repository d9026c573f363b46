"""Train the in-project feature extractor (features.FeatureNet) on the procedural data, and save it.

Classes: "eczema/healthy", "eczema/eczema" (the same seed's patch without / with the lesion),
"hand/healthy", "hand/eczema", and "lesion/<CLASS>" for every lesion class the renderer draws
(NV, MEL, ...). Deterministic given the config: the data come from renderer seeds
[seed_base, seed_base + per_kind) -- by default 5·10^8, disjoint from the training seeds of the
models (< 10^6) and from the evaluation seeds (>= 10^9; see evaluate.py) -- and torch is seeded.

    python -m dermagan.training.metrics.feature_training --out models/feature-extractor.onnx

takes a few minutes on 2 CPU cores with the default config; `tiny()` takes seconds (tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermagan.training.metrics.features import build_feature_net, save_extractor, to_input, torch_extractor, Extractor

#: Renderer seeds of the extractor's training data (see the module docstring for the split).
FEATURE_SEED_BASE = 500_000_000


@dataclass(frozen=True)
class FeatureNetConfig:
    input_size: int = 64  # px the net sees (every image is resized to this)
    render_size: int = 128  # px the renderer draws at (then resized, as evaluated images are)
    per_kind: int = 400  # renderer seeds per kind (eczema / hand give a healthy + an eczema image each)
    width: int = 16  # channels of the first block (then x2, x4)
    feature_dim: int = 128  # feature vector size (channels of the last block)
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.1
    seed: int = 0  # torch / shuffling seed
    seed_base: int = FEATURE_SEED_BASE  # first renderer seed


def default() -> FeatureNetConfig:
    return FeatureNetConfig()


def tiny() -> FeatureNetConfig:
    """Seconds on CPU: for tests only (features are still informative on simple data)."""
    return FeatureNetConfig(input_size=32, render_size=32, per_kind=24, width=8, feature_dim=32, steps=60, batch=32)


def _render_one(render, kind: str, size: int, seed: int):
    return render(kind, seed, size=size)


def render_feature_data(per_kind: int, size: int, seed_base: int = FEATURE_SEED_BASE,
                        kinds: tuple[str, ...] = ("eczema", "hand", "lesion"),
                        render=None, workers: int = 1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, size, size, 3], labels int64 [N], classes) drawn by `render` (default: the
    procedural renderer, training/synth; tests pass metrics/toy.py's), in `workers` processes."""
    if render is None:
        from dermagan.training.synth import render

    images, names = [], []
    for kind in kinds:
        seeds = range(seed_base, seed_base + per_kind)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                samples = list(pool.map(partial(_render_one, render, kind, size), seeds, chunksize=16))
        else:
            samples = [render(kind, seed, size=size) for seed in seeds]
        for s in samples:
            if kind == "lesion":
                images.append(s.image)
                names.append(f"lesion/{s.label}")
                continue
            images.append(s.healthy)
            names.append(f"{kind}/healthy")
            if s.mask is not None and (s.mask > 0).any() and not np.array_equal(s.image, s.healthy):
                images.append(s.image)
                names.append(f"{kind}/eczema")
    classes = sorted(set(names))
    return np.stack(images), np.array([classes.index(n) for n in names], np.int64), classes


def seed_groups(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """The renderer seed of each image of `render_feature_data`'s output, as a group number: a kind's eczema
    image is its seed's twin of the healthy image just before it (same skin, same hand); every other image
    is a seed of its own."""
    names = [classes[i] for i in labels]
    groups = np.zeros(len(names), np.int64)
    for i, name in enumerate(names):
        twin = i > 0 and name.endswith("/eczema") and names[i - 1] == name[: -len("eczema")] + "healthy"
        groups[i] = groups[i - 1] if twin else (groups[i - 1] + 1 if i else 0)
    return groups


def train_feature_net(cfg: FeatureNetConfig, data: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                      log=partial(print, flush=True), workers: int = 2):
    """Train a FeatureNet; returns (module, classes, facts). `data` overrides the renderer (tests);
    `workers` processes render the data."""
    import torch

    t0 = time.time()
    images, labels, classes = data if data is not None else render_feature_data(
        cfg.per_kind, cfg.render_size, cfg.seed_base, workers=workers)
    x_all = torch.from_numpy(to_input(images, cfg.input_size))  # (N, 3, S, S)
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(x_all), generator=g)
    n_val = int(len(x_all) * cfg.val_fraction)
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(cfg.seed)
    net = build_feature_net(len(classes), cfg.width, cfg.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    net.train()
    for step in range(cfg.steps):
        idx = train[torch.randint(len(train), (cfg.batch,), generator=g)]
        x, y = x_all[idx], y_all[idx]
        # Flips are label-preserving for every class (the only augmentation).
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
        loss = torch.nn.functional.cross_entropy(net(x)[1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % max(1, cfg.steps // 10) == 0 or step == cfg.steps - 1):
            log(f"feature net step {step:5d}/{cfg.steps}  loss {loss.item():.3f}")
    net.eval()
    with torch.no_grad():
        hit = (net(x_all[val])[1].argmax(1) == y_all[val]).float() if n_val else torch.zeros(0)
    val_acc = float(hit.mean()) if n_val else float("nan")
    # The split is by image (kept: the shipped extractor was trained on exactly this split, and its recipe
    # must keep reproducing it), so a seed's healthy and eczema twins can fall one on each side. The
    # accuracy on the held-out images whose seed has no image in training is the clean held-out number.
    groups = seed_groups(labels, classes)
    unseen = torch.from_numpy(~np.isin(groups[val.numpy()], groups[train.numpy()]))
    n_unseen = int(unseen.sum())
    clean = {"val_accuracy_unseen_seeds": float(hit[unseen].mean()), "n_val_unseen_seeds": n_unseen} if n_unseen else {}
    facts = {"config": dataclasses.asdict(cfg), "val_accuracy": val_acc, **clean, "n_images": int(len(x_all)),
             "train_seconds": round(time.time() - t0, 1),
             "recipe": "python -m dermagan.training.metrics.feature_training"}
    if log:
        unseen_text = f" ({clean['val_accuracy_unseen_seeds']:.3f} on the {n_unseen} of seeds it never saw)" if clean else ""
        log(f"feature net: {len(classes)} classes, {len(x_all)} images, held-out accuracy {val_acc:.3f}{unseen_text}, "
            f"{facts['train_seconds']} s")
    return net, classes, facts


def trained_extractor(cfg: FeatureNetConfig, data=None, log=partial(print, flush=True)) -> Extractor:
    """Train and wrap as an Extractor without saving (tests, or evaluate with no extractor file)."""
    net, classes, facts = train_feature_net(cfg, data, log=log)
    return torch_extractor(net, name="in-project", input_size=cfg.input_size, classes=classes, facts=facts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the in-project feature extractor of `dermagan evaluate`")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write, e.g. models/feature-extractor.onnx")
    p.add_argument("--preset", choices=("default", "tiny"), default="default")
    p.add_argument("--steps", type=int, help="override the preset's optimisation steps")
    p.add_argument("--per-kind", type=int, help="override the preset's renderer seeds per kind")
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; 1 is faster on a busy box)")
    args = p.parse_args(argv)
    cfg = {"default": default, "tiny": tiny}[args.preset]()
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.per_kind:
        cfg = dataclasses.replace(cfg, per_kind=args.per_kind)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    net, classes, facts = train_feature_net(cfg, workers=args.workers)
    save_extractor(net, args.out, classes=classes, input_size=cfg.input_size, facts=facts)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
