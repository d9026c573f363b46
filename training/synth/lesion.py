"""Pigmented lesions (SYNTHETIC_DATA.md B.7): common and atypical nevi (ISIC class NV) and
melanoma-like lesions (MEL), following the ABCD criteria and the PH2 annotations.

These are synthetic look-alikes for an unconditional "skin lesion" generator, not diagnostic data.
The lesion is composited over healthy skin of the B.1/B.2 model, in dermoscopy mode (field stop,
air bubbles, thick hairs) or clinical close-up mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import blur, fbm, smoothstep, worley
from .shapes import grid, polar_blob

CLASSES = ("NV", "MEL")

#: PH2 colour set, Lab ranges (L, a, b) lows and highs [est].
COLOURS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "light_brown": ((45, 10, 20), (60, 18, 30)),
    "dark_brown": ((25, 8, 10), (40, 15, 20)),
    "black": ((8, 0, 0), (20, 5, 6)),
    "blue_grey": ((40, -3, -12), (55, 4, 0)),
    "red": ((40, 25, 10), (55, 40, 20)),
    "white": ((65, 2, 6), (80, 6, 12)),
}

# subtype: diameter mm, aspect, border a_max, warp (x r0), number of colours, palette
_SUBTYPES = {
    "common": ((2, 6), (1.0, 1.3), 0.06, (0.0, 0.05), (1, 2), ("light_brown", "dark_brown")),
    "atypical": ((4, 8), (1.0, 1.5), 0.16, (0.05, 0.15), (2, 3), ("light_brown", "dark_brown", "black")),
    "melanoma": ((6, 20), (1.0, 1.6), 0.2, (0.1, 0.25), (3, 6), tuple(COLOURS)),
}


@dataclass
class Lesion:
    alpha: np.ndarray  # (H, W) lesion coverage
    lab: np.ndarray  # (H, W, 3) lesion colour
    height: np.ndarray  # (H, W) raised lesion (shading)
    meta: dict


def subtype_for(label: str, rng: np.random.Generator) -> str:
    if label == "MEL":
        return "melanoma"
    return "atypical" if rng.random() < 0.3 else "common"


def diameter_mm(rng: np.random.Generator, subtype: str) -> float:
    return float(rng.uniform(*_SUBTYPES[subtype][0]))


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
    lo, hi = COLOURS[name]
    return rng.uniform(lo, hi)


def draw(rng: np.random.Generator, shape: tuple[int, int], subtype: str, diam_px: float, px_mm: float, tone: dict) -> Lesion:
    h, w = shape
    _, aspect_r, a_max, warp_r, ncol_r, palette = _SUBTYPES[subtype]
    yy, xx = grid(shape)
    r0 = diam_px / 2
    centre = np.array([h / 2, w / 2]) + rng.normal(0, 0.05 * min(h, w), 2)
    warp_amp = rng.uniform(*warp_r) * r0
    wy = fbm(rng, shape, cells=rng.uniform(1.5, 3), octaves=2) * warp_amp
    wx = fbm(rng, shape, cells=rng.uniform(1.5, 3), octaves=2) * warp_amp
    # Asymmetry lives in the low harmonics; high ones only notch the border.
    f = polar_blob(rng, yy + wy, xx + wx, centre, r0, a_max=a_max, harmonics=range(2, 8), aspect=rng.uniform(*aspect_r),
                   angle=rng.uniform(0, np.pi))
    rho = np.clip(1.0 - f / r0, 0.0, 2.0)  # ~0 at the centre, 1 at the border
    edge: np.ndarray | float
    if subtype == "melanoma":  # variable edge: sharp in places, fading in others
        edge = 1.0 + 4.0 * smoothstep(-1, 1, fbm(rng, shape, cells=3, octaves=2))
    else:
        edge = rng.uniform(1.0, 3.0)
    alpha = np.clip(0.5 + f / (2 * edge), 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)

    # Colour: nevi are darker at the centre (or uniform); melanoma has patchy multi-colour regions.
    n_col = int(rng.integers(ncol_r[0], ncol_r[1] + 1))
    names = [palette[0]] if subtype != "melanoma" else ["dark_brown"]
    rest = [p for p in palette if p not in names]
    names += list(rng.choice(rest, size=min(n_col - 1, len(rest)), replace=False))
    cols = [_colour(rng, n) for n in names]
    lab = np.empty((h, w, 3))
    if subtype == "melanoma":
        fields = np.stack([fbm(rng, shape, cells=rng.uniform(2, 5), octaves=3) for _ in cols])
        fields[0] += 1.0  # dark brown dominates
        for i, n in enumerate(names):
            if n in ("white", "blue_grey", "red"):  # minority colours: patches, not the whole lesion
                fields[i] -= rng.uniform(0.6, 1.3) + (0.5 if n == "white" else 0.0)
        wts = np.exp(2.5 * fields)
        wts /= wts.sum(0, keepdims=True)
        lab[:] = blur(np.einsum("khw,kc->hwc", wts, np.array(cols)), 0.02 * diam_px + 1.0)
    else:
        centre_col = cols[-1] if len(cols) > 1 else cols[0] - np.array([5, 0, 3])
        edge_col = cols[0]
        t = np.clip(rho + 0.25 * fbm(rng, shape, cells=4, octaves=3), 0, 1)[..., None] ** rng.uniform(0.8, 2.0)
        lab[:] = centre_col + t * (edge_col - centre_col)
    # Lesions sit in the patient's skin: on darker skin they are darker overall.
    darken = float(np.clip((tone["L"] - 4.0) / 62.0, 0.45, 1.0))
    lab[..., 0] *= darken
    lab[..., 1:] *= np.sqrt(darken)  # darker pigment is less chromatic, not ochre
    lab[..., 0] += 1.5 * fbm(rng, shape, cells=8, octaves=3)

    # Pigment network (Worley F2-F1 borders), fading towards the edge.
    cell_px = max(rng.uniform(0.2, 0.4) / px_mm, 2.5)
    jitter = {"common": 0.6, "atypical": 0.9, "melanoma": 1.0}[subtype]
    f1, f2 = worley(rng, shape, cell_px, jitter)
    lw = cell_px * {"common": 0.12, "atypical": 0.18, "melanoma": 0.22}[subtype]
    net = 1.0 - smoothstep(0.0, lw, f2 - f1)
    if subtype != "common":  # irregular: variable thickness, broken lines
        net *= smoothstep(-0.8 if subtype == "atypical" else -0.2, 0.6, fbm(rng, shape, cells=6, octaves=2))
    net *= smoothstep(1.1, 0.5, rho)
    lab[..., 0] -= rng.uniform(5, 10) * net
    lab[..., 2] -= 2.0 * net

    # Dots and globules.
    n_dots = int(rng.integers(0, 6)) if subtype == "common" else int(rng.integers(4, 25))
    if n_dots:
        ang = rng.uniform(0, 2 * np.pi, n_dots)
        rad = (rng.uniform(0, 0.5, n_dots) if subtype == "common" else rng.uniform(0.5, 1.0, n_dots)) * r0
        dots = np.zeros(shape)
        pts = np.clip(np.stack([centre[0] + rad * np.sin(ang), centre[1] + rad * np.cos(ang)], 1), 0, [h - 1, w - 1])
        np.add.at(dots, (pts[:, 0].astype(int), pts[:, 1].astype(int)), 1.0)
        size = max(rng.uniform(0.02, 0.05) * r0, 0.7)
        dots = np.clip(blur(dots, size) * 2 * np.pi * size * size, 0, 1)
        dot_col = _colour(rng, "dark_brown" if subtype == "common" else "black")
        lab += dots[..., None] * (dot_col - lab) * rng.uniform(0.5, 0.8)

    streaks = veil = 0.0
    if subtype == "melanoma":
        # Radial streaks over part of the border.
        theta = np.arctan2(yy - centre[0], xx - centre[1])
        sector = smoothstep(0.2, 0.6, np.cos(theta - rng.uniform(0, 2 * np.pi))) * (rng.random() < 0.7)
        lines = ((1 + np.cos(theta * rng.integers(14, 30) + 2 * wy / max(r0, 1))) / 2) ** 3
        streak = blur(lines * sector * smoothstep(0.7, 0.95, rho) * smoothstep(1.2, 1.0, rho), 0.01 * diam_px + 0.5) * 0.6
        alpha = np.maximum(alpha, streak)
        lab += streak[..., None] * (_colour(rng, "dark_brown") - lab)
        streaks = float(sector.mean())
        # Blue-white veil and white regression patches.
        veil_f = smoothstep(0.3, 1.6, fbm(rng, shape, cells=3, octaves=3)) * smoothstep(1.0, 0.7, rho) * (rng.random() < 0.7)
        veil_col = np.array([rng.uniform(50, 65), rng.uniform(-2, 4), rng.uniform(-12, -2)])
        lab += (veil_f * 0.55)[..., None] * (veil_col - lab)
        veil = float((veil_f > 0.5).sum() / max((alpha > 0.5).sum(), 1))

    height = alpha * r0 * rng.uniform(0.0, 0.25)
    meta = {"subtype": subtype, "colours": [str(n) for n in names], "diameter_px": float(diam_px),
            "pigment_cell_px": float(cell_px), "dots": n_dots, "streaks": streaks, "veil_fraction": veil}
    return Lesion(alpha, lab, blur(height, max(r0 * 0.15, 1.0)), meta)


def dermoscopy_frame(rng: np.random.Generator, lab: np.ndarray) -> tuple[np.ndarray, dict]:
    """Circular field stop (black corners) and 0-3 air bubbles (bright rings)."""
    h, w = lab.shape[:2]
    yy, xx = grid((h, w))
    out = lab.copy()
    meta: dict = {}
    if rng.random() < 0.6:
        radius = rng.uniform(0.5, 0.72) * min(h, w)
        rr = np.hypot(yy - h / 2, xx - w / 2)
        stop = smoothstep(radius - 2, radius + 2, rr)
        out = out * (1 - stop[..., None]) + stop[..., None] * np.array([rng.uniform(2, 8), 0.0, 0.0])
        meta["field_stop_px"] = float(radius)
    n_bub = int(rng.integers(1, 4)) if rng.random() < 0.25 else 0
    for _ in range(n_bub):
        c = rng.uniform(0, 1, 2) * (h, w)
        r = rng.uniform(0.03, 0.1) * min(h, w)
        d = np.hypot(yy - c[0], xx - c[1])
        ring = np.exp(-(((d - r) / max(0.05 * r, 0.7)) ** 2))
        out[..., 0] += ring * rng.uniform(5, 15)
    meta["bubbles"] = n_bub
    return out, meta
