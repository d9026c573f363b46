"""A toy stand-in for the procedural renderer: same `render(kind, seed, size)` interface and sample
fields (image, healthy, mask, hand, label, meta), ~100x faster and far simpler.

For the metric sanity tests and `evaluate`'s own tests only, so they run in seconds and do not move
when the real renderer (training/synth) changes. Never used to evaluate a shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LESION_CLASSES = ("NV", "MEL", "BKL")
_LESION_COLOUR = {"NV": (120, 80, 50), "MEL": (40, 30, 40), "BKL": (160, 120, 70)}


@dataclass
class ToySample:
    image: np.ndarray
    healthy: np.ndarray | None
    mask: np.ndarray | None
    label: str
    hand: np.ndarray | None = None
    soft_mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def _ellipse(size: int, rng: np.random.Generator, r_min: float, r_max: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ry, rx = rng.uniform(r_min, r_max, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def _skin(size: int, rng: np.random.Generator) -> np.ndarray:
    tone = np.array([225, 180, 150]) * rng.uniform(0.55, 1.0)
    # smooth mottling: upsampled coarse noise
    coarse = rng.normal(0, 6, (4, 4, 1))
    mottle = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    fine = rng.normal(0, 2, (size, size, 1))
    return np.clip(tone + mottle + fine, 0, 255)


def render(kind: str, seed: int, size: int = 32, **params) -> ToySample:
    """Deterministic toy sample of `kind` in {"eczema", "hand", "lesion"}."""
    rng = np.random.default_rng([seed, {"eczema": 0, "hand": 1, "lesion": 2}[kind]])
    skin = _skin(size, rng)
    if kind == "lesion":
        label = LESION_CLASSES[seed % len(LESION_CLASSES)]
        m = _ellipse(size, rng, 0.12, 0.3 if label == "MEL" else 0.2)
        img = skin.copy()
        img[m] = np.array(_LESION_COLOUR[label]) + rng.normal(0, 10 if label == "MEL" else 3, (m.sum(), 3))
        return ToySample(np.clip(img, 0, 255).astype(np.uint8), None, None, label, meta={"seed": seed})
    hand = None
    if kind == "hand":
        bg = np.full((size, size, 3), rng.uniform(20, 90))
        hand = _ellipse(size, rng, 0.25, 0.4)
        skin = np.where(hand[..., None], skin, bg)
    healthy = np.clip(skin, 0, 255).astype(np.uint8)
    mask = _ellipse(size, rng, 0.1, 0.25)
    if hand is not None:
        mask &= hand
    redness = np.array([15.0, -25.0, -20.0]) * rng.uniform(0.8, 1.2)
    sick = skin + mask[..., None] * (redness + rng.normal(0, 5, (size, size, 3)))
    return ToySample(np.clip(sick, 0, 255).astype(np.uint8), healthy, mask.astype(np.uint8) * 255, kind,
                     hand=None if hand is None else hand.astype(np.uint8) * 255, meta={"seed": seed})
