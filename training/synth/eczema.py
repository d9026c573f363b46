"""Eczema lesion layer (SYNTHETIC_DATA.md B.5): irregular masks and the EASI signs.

Signs: erythema, oedema/papulation, excoriation, lichenification (EASI, 0-3 with half points),
plus scaling/dryness and oozing/crusts (SCORAD) and post-inflammatory pigment change. Darker
skin (ITA < 10) follows the spec's rules: erythema is violaceous / grey-brown rather than pink,
scale is ashy grey, crusts near-black, hyperpigmentation stronger.

The layer is computed once and applied to the healthy Lab + height fields; everything outside
`support` (the mask dilated by `dilation_px`) is left untouched, which is what makes the
(healthy, mask, eczema) triplet pixel-exact outside the dilated mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .noise import blur, fbm, smoothstep
from .shapes import grid, polar_blob, segment_distance
from .skin import LineSpec, line_furrows

STAGES = ("acute", "subacute", "chronic")


def dilation_px(shape: tuple[int, int]) -> int:
    """Radius (pixels) of the band around the mask in which a lesion may change pixels."""
    return max(3, int(round(0.04 * max(shape))))


def _graded(rng: np.random.Generator, s: float, table: dict[int, tuple[float, float]]) -> float:
    """Draw a parameter for (fractional) severity s from per-grade ranges, linear between grades."""
    if s <= 0:
        return 0.0
    g0 = int(np.clip(np.floor(s), 1, 3))
    g1 = min(g0 + 1, 3)
    f = float(np.clip(s - g0, 0, 1))
    lo = (1 - f) * table[g0][0] + f * table[g1][0]
    hi = (1 - f) * table[g0][1] + f * table[g1][1]
    # At severity below 1 (e.g. 0.5), scale the grade-1 range down.
    scale = min(s, 1.0)
    return scale * rng.uniform(lo, hi)


def _half(x: float) -> float:
    return float(np.clip(np.round(x * 2) / 2, 0.0, 3.0))


def draw_severities(rng: np.random.Generator, grade: int, stage: str) -> dict[str, float]:
    """Per-sign severities around an overall grade, shaped by the stage (acute papules/vesicles
    and oozing; subacute scaling and crusts; chronic lichenification)."""
    if grade == 0:
        return {k: 0.0 for k in ("erythema", "papulation", "excoriation", "lichenification", "scaling", "crusts")}
    g = float(grade)
    j = lambda: rng.uniform(-0.5, 0.5)  # noqa: E731
    shift = {"acute": (0.0, -3.0, 0.2, 1.0), "subacute": (-0.5, -1.0, 0.5, 0.5), "chronic": (-1.0, 0.0, 0.8, 0.0)}
    pap, lich, scale_w, crust_w = shift[stage]
    return {
        "erythema": float(np.clip(_half(g + j()), 1.0, 3.0)),
        "papulation": _half(g + pap + j()),
        "excoriation": _half(g - rng.choice([0.0, 1.0, 2.0]) + j()),
        "lichenification": _half(g + lich + j()),
        "scaling": _half(g * scale_w + j()),
        "crusts": _half(g * crust_w - 0.5 + j()),
    }


@dataclass
class EczemaLayer:
    soft: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool, soft > 0.5
    support: np.ndarray  # (H, W) bool, mask dilated by dilation_px
    d_lab: np.ndarray  # (H, W, 3) additive Lab offsets
    d_height: np.ndarray  # (H, W)
    overlays: list = field(default_factory=list)  # [(alpha (H, W), lab colour (H, W, 3) or (3,))]
    meta: dict = field(default_factory=dict)

    def apply(self, lab: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = lab + self.d_lab
        for alpha, colour in self.overlays:
            out = out + alpha[..., None] * (colour - out)
        return out, height + self.d_height


def _mask(
    rng: np.random.Generator, shape: tuple[int, int], stage: str, confine: np.ndarray | None,
    sites: np.ndarray | None, r0_frac: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict]:
    """Soft mask, binary mask, taper (1 inside, 0 from 3/4 of the dilation outwards: everything
    the lesion draws is multiplied by it, so the hard cut at the dilated mask is invisible)."""
    h, w = shape
    yy, xx = grid(shape)
    side = min(h, w)
    d = dilation_px(shape)
    warp_y = fbm(rng, shape, cells=rng.uniform(2.0, 4.0), octaves=3)
    warp_x = fbm(rng, shape, cells=rng.uniform(2.0, 4.0), octaves=3)
    rough = fbm(rng, shape, cells=rng.uniform(6.0, 10.0), octaves=2)  # ragged, patchy border
    for _attempt in range(8):
        r0 = rng.uniform(*r0_frac) * side
        if sites is not None and len(sites):
            c = sites[rng.integers(len(sites))] + rng.normal(0, 0.25 * r0, 2)
        else:
            c = rng.uniform(0.25, 0.75, 2) * (h, w)
        amp = rng.uniform(0.1, 0.35) * r0
        f = polar_blob(rng, yy + amp * warp_y, xx + amp * warp_x, c, r0) + rng.uniform(0.03, 0.08) * r0 * rough
        for _ in range(int(rng.integers(0, 6))):  # satellite blobs
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(1.1, 1.6) * r0
            cs = (c[0] + dist * np.sin(ang), c[1] + dist * np.cos(ang))
            f = np.maximum(f, polar_blob(rng, yy, xx, cs, rng.uniform(0.1, 0.3) * r0, a_max=0.2))
        # Acute eczema has ill-defined borders, chronic plaques sharper ones.
        edge = {"acute": 0.25, "subacute": 0.15, "chronic": 0.08}[stage] * r0 * rng.uniform(0.7, 1.0)
        soft = smoothstep(-edge, edge, f)
        if confine is not None:
            soft = soft * confine
        mask = soft > 0.5
        area = mask.mean() if confine is None else mask.sum() / max(confine.sum(), 1.0)
        if mask.any() and (confine is not None or 0.05 <= area <= 0.6):
            break
    if not mask.any():  # last resort: a disc at the most central allowed point
        where = np.argwhere(confine > 0.5) if confine is not None else np.array([[h // 2, w // 2]])
        c = where[len(where) // 2]
        soft = smoothstep(-2.0, 2.0, 0.1 * side - np.hypot(yy - c[0], xx - c[1]))
        if confine is not None:
            soft = soft * confine
        mask = soft > 0.5
        r0 = 0.1 * side
    outside = ndimage.distance_transform_edt(~mask)
    taper = np.clip(1.0 - outside / (0.75 * d), 0.0, 1.0)
    soft = soft * taper
    return soft, mask, taper, float(r0), {"r0_px": float(r0), "area": float(mask.mean()), "center": [float(c[0]), float(c[1])]}


def _vesicles(rng: np.random.Generator, shape: tuple[int, int], idx: np.ndarray, s: float, mm: float,
              d_lab: np.ndarray, d_height: np.ndarray, soft: np.ndarray) -> int:
    """Acute eczema: 1-2 mm clear vesicles -- pale, slightly yellow domes with a small specular
    highlight (a fixed up-left glint). Adds into d_lab / d_height; returns the count."""
    n = int(rng.poisson(2 + 4 * s))
    r_px = max(rng.uniform(0.5, 1.0) * mm, 0.8)
    pick = idx[rng.integers(0, len(idx), n)]
    domes = np.zeros(shape)
    np.add.at(domes.ravel(), pick, 1.0)
    domes = np.minimum(blur(domes, r_px / 2) * 2 * np.pi * (r_px / 2) ** 2, 1.0) * soft
    glint = np.zeros(shape)
    ys, xs = np.unravel_index(pick, shape)
    off = max(int(round(0.35 * r_px)), 1)
    np.add.at(glint, (np.clip(ys - off, 0, shape[0] - 1), np.clip(xs - off, 0, shape[1] - 1)), 1.0)
    glint = np.minimum(blur(glint, max(r_px / 5, 0.5)) * 2 * np.pi * max(r_px / 5, 0.5) ** 2, 1.0) * soft
    d_lab[..., 0] += domes * rng.uniform(2, 4) + glint * rng.uniform(4, 9)
    d_lab[..., 1] -= domes * rng.uniform(1, 3)
    d_lab[..., 2] += domes * rng.uniform(1, 4)
    d_height += domes * r_px * 0.5
    return n


def draw(
    rng: np.random.Generator, shape: tuple[int, int], px_mm: float, tone: dict, grade: int, lines: LineSpec,
    confine: np.ndarray | None = None, sites: np.ndarray | None = None, r0_frac: tuple[float, float] = (0.1, 0.35),
) -> EczemaLayer:
    """The eczema layer of one sample. confine: (H, W) in [0, 1] the lesion must stay inside
    (the hand); sites: (K, 2) favoured centres (knuckles, finger webs, wrist)."""
    h, w = shape
    # Separate streams: the same seed gives the same lesion outline and stage at every grade.
    mask_rng, rng = rng.spawn(2)
    stage = STAGES[int(mask_rng.integers(3))]
    soft, mask, taper, r0, mask_meta = _mask(mask_rng, shape, stage, confine, sites, r0_frac)
    sev = draw_severities(rng, grade, stage)
    d = dilation_px(shape)
    support = ndimage.distance_transform_edt(~mask) <= d
    if confine is not None:
        support &= ndimage.binary_dilation(confine > 0.5, iterations=1)
    inside = smoothstep(0.3, 0.7, soft)  # the lesion body, for signs that stay within the mask
    yy, xx = grid(shape)
    mm = 1.0 / px_mm  # pixels per millimetre
    dark = float(smoothstep(20.0, 0.0, np.array(tone["ita"])))  # 1 = the spec's "ITA < 10" rules
    d_lab = np.zeros((h, w, 3))
    d_height = np.zeros(shape)
    overlays: list = []
    signs: dict = {}
    blotch = 0.55 + 0.45 * smoothstep(-1.5, 1.5, fbm(rng, shape, cells=rng.uniform(4, 8), octaves=4))

    # Erythema: Lab shift x soft mask x blotch. Dark skin: violaceous / grey-brown, not pink.
    s = sev["erythema"]
    if s > 0:
        da = _graded(rng, s, {1: (3, 6), 2: (6, 12), 3: (12, 20)})
        dl = -_graded(rng, s, {1: (1, 3), 2: (3, 6), 3: (5, 10)})
        db = rng.uniform(-1, 3) * min(s, 1)
        da_dark = da * rng.uniform(0.3, 0.5)
        dl_dark = -_graded(rng, s, {1: (4, 6), 2: (6, 9), 3: (8, 12)})
        db_dark = -_graded(rng, s, {1: (1, 2), 2: (1, 3), 3: (2, 4)})  # more lowers b* into purple
        shift = np.array([(1 - dark) * dl + dark * dl_dark, (1 - dark) * da + dark * da_dark,
                          (1 - dark) * db + dark * db_dark])
        # Erythema fades out beyond the plaque (ill-defined border), within the taper.
        spread = blur(soft, 0.08 * r0) * taper if confine is None else blur(soft, 0.08 * r0) * taper * confine
        d_lab += (np.maximum(soft**1.5, spread) * blotch)[..., None] * shift
        signs["erythema"] = shift.round(2).tolist()

    # Oedema / papulation: Gaussian bumps (shaded by the lighting) plus diffuse swelling.
    s = sev["papulation"]
    if s > 0:
        area_cm2 = mask.sum() * (px_mm / 10) ** 2
        density = _graded(rng, s, {1: (0.5, 2), 2: (2, 6), 3: (6, 15)})
        n = rng.poisson(density * area_cm2 * 4 + s * 2)  # a few at least, even on a small plaque
        r_px = max(rng.uniform(0.5, 1.5) * mm, 1.0)
        bumps = np.zeros(shape)
        idx = np.flatnonzero(mask)
        if n and len(idx):
            pick = idx[rng.integers(0, len(idx), n)]
            np.add.at(bumps.ravel(), pick, rng.uniform(0.5, 1.0, n))
            bumps = blur(bumps, r_px / 2) * 2 * np.pi * (r_px / 2) ** 2  # unit peaks, overlapping ones add
            bumps = bumps / (1.0 + 0.5 * bumps)  # crowded papules merge without forming a plateau
        swell = blur(soft, 0.3 * r0) * rng.uniform(0.3, 1.0) * s / 3
        d_height += bumps * r_px * rng.uniform(0.3, 0.6) * soft + swell * 0.03 * r0
        pa = rng.uniform(2, 5)
        d_lab[..., 1] += bumps * pa * (1 - 0.6 * dark)
        d_lab[..., 0] += bumps * dark * rng.uniform(2, 5)  # greyer, lighter papule tops
        signs["papules"] = int(n)
        if stage == "acute" and len(idx):
            signs["vesicles"] = _vesicles(rng, shape, idx, s, mm, d_lab, d_height, soft)

    # Excoriation: groups of 2-5 roughly parallel scratch strokes, fresh or crusted.
    s = sev["excoriation"]
    if s > 0:
        count = int(round(_graded(rng, s, {1: (1, 3), 2: (3, 8), 3: (6, 14)})))
        idx = np.flatnonzero(mask)
        strokes = 0
        # Scratches follow the finger's arc, not a ruler: bend them with a smooth warp.
        bend = max(0.2 * mm, 0.5)
        sy = yy + bend * fbm(rng, shape, cells=rng.uniform(1.5, 3), octaves=1)
        sx = xx + bend * fbm(rng, shape, cells=rng.uniform(1.5, 3), octaves=1)
        while strokes < count and len(idx):
            centre = np.array(np.unravel_index(idx[rng.integers(len(idx))], shape), dtype=np.float64)
            ang = rng.uniform(0, np.pi)
            k = int(rng.integers(2, 6))
            length = min(rng.uniform(3, 20) * mm, 1.2 * r0)
            gap = rng.uniform(1.0, 2.5) * mm
            width = max(rng.uniform(0.2, 0.5) * mm, 1.0)
            offs = (np.arange(k) - (k - 1) / 2) * gap
            normal = np.array([np.cos(ang), -np.sin(ang)])
            angs = ang + np.radians(rng.uniform(-10, 10, k))
            dirs = np.stack([np.sin(angs), np.cos(angs)], 1) * (length * rng.uniform(0.6, 1.0, (k, 1))) / 2
            mids = centre + offs[:, None] * normal + rng.normal(0, 0.3 * gap, (k, 1)) * dirs / (length / 2)
            dist = segment_distance(sy, sx, mids - dirs, mids + dirs)  # (k, H, W)
            # Tapered ends: a scratch is widest in its middle.
            along = np.abs(((sy[None] - mids[:, 0, None, None]) * dirs[:, 0, None, None]
                            + (sx[None] - mids[:, 1, None, None]) * dirs[:, 1, None, None])
                           / (dirs[:, 0, None, None] ** 2 + dirs[:, 1, None, None] ** 2))
            half = width / 2 * np.sqrt(np.clip(1 - along**2, 0.05, 1))
            cov = np.clip(half + 0.5 - dist, 0, 1).max(0)
            broken = smoothstep(-0.8, 0.3, fbm(rng, shape, cells=max(shape) / (3 * mm), octaves=2))
            cov = blur(cov * broken, 0.4) * inside
            if rng.random() < 0.5:  # fresh erosion
                # Fresh blood: darker and redder, with some yellow (b*), not pink.
                d_lab += cov[..., None] * np.array([-rng.uniform(12, 20), rng.uniform(12, 20) * (1 - 0.5 * dark),
                                                    rng.uniform(4, 8)])
                d_height -= cov * 0.3
            else:  # haemorrhagic crust; near-black on dark skin
                crust_l = (1 - dark) * rng.uniform(25, 35) + dark * rng.uniform(15, 25)
                colour = np.array([crust_l, rng.uniform(15, 20) * (1 - 0.4 * dark), rng.uniform(10, 20)])
                overlays.append((cov * rng.uniform(0.6, 0.85), colour))
                d_height += cov * 0.3
            strokes += k
        signs["scratches"] = strokes

    # Lichenification: the skin lines, wider and deeper; raised plateaus; hyperpigmentation.
    s = sev["lichenification"]
    if s > 0:
        furrow = line_furrows(lines, spacing_scale=rng.uniform(1.5, 3.0), sharpness=3.0)
        fl = _graded(rng, s, {1: (2, 4), 2: (4, 7), 3: (7, 10)})
        d_lab[..., 0] -= fl * furrow * soft
        d_height -= rng.uniform(3, 8) / 8 * furrow * soft * min(lines.spacing_px * 0.15, 1.5)
        hyper = (1 - dark) * rng.uniform(2, 5) + dark * rng.uniform(5, 12)
        d_lab[..., 0] -= hyper * soft * s / 3
        d_lab[..., 2] -= dark * rng.uniform(1, 3) * soft * s / 3  # grey-brown on dark skin
        signs["lichen_furrow_dL"] = float(fl)

    # Scaling / dryness: soft thresholded fine fBm, blurred, more at the periphery.
    s = sev["scaling"]
    if s > 0:
        cells = 24.0 * max(shape) * px_mm / 20.0
        flakes = fbm(rng, shape, cells=cells, octaves=3)
        thr = rng.uniform(1.2, 1.8) - 0.25 * s
        flakes = blur(smoothstep(thr - 0.4, thr + 0.4, flakes), max(shape) / 128.0)
        periphery = 0.4 + 2.4 * soft * (1 - soft)
        cov = np.clip(flakes * periphery * soft * min(s, 2) / 2 * 1.5, 0, 1)
        dl = (1 - dark) * rng.uniform(5, 12) + dark * rng.uniform(8, 20)
        d_lab[..., 0] += cov * dl
        d_lab[..., 1] -= cov * ((1 - dark) * rng.uniform(3, 6) + dark * 0.5 * tone["a"])
        d_lab[..., 2] -= cov * ((1 - dark) * rng.uniform(2, 5) + dark * 0.5 * tone["b"])
        signs["scale_dL"] = float(dl)

    # Oozing / serous crusts: honey-yellow irregular blobs, 0-10 % of the lesion.
    s = sev["crusts"]
    if s > 0:
        blobs = fbm(rng, shape, cells=max(shape) * px_mm / 3.0, octaves=2)  # few octaves: round crusts, not worms
        thr = np.quantile(blobs[mask], 1 - rng.uniform(0.02, 0.1) * s / 3) if mask.any() else 9.0
        alpha = blur(smoothstep(thr - 0.3, thr + 0.4, blobs), max(shape) / 200) * inside
        grain = fbm(rng, shape, cells=max(shape) / 4.0, octaves=2)
        colour = np.stack([rng.uniform(55, 68) + 3 * grain - 6 * (1 - alpha), np.full(shape, rng.uniform(6, 14)),
                           rng.uniform(25, 38) + 3 * grain], -1)
        if dark > 0:  # crusts read darker on dark skin
            colour[..., 0] -= dark * rng.uniform(10, 20)
        overlays.append((alpha * rng.uniform(0.5, 0.75), colour))
        d_height += alpha * 0.5
        signs["crust_fraction"] = float((alpha > 0.5).sum() / max(mask.sum(), 1))

    # Post-inflammatory pigment change (chronic): low-frequency patches over the lesion.
    if stage == "chronic" and grade > 0:
        hyper = rng.random() < (0.5 + 0.4 * dark)
        amp = ((1 - dark) * rng.uniform(3, 8) + dark * rng.uniform(5, 15)) * (1 if hyper else -1)
        patches = smoothstep(-0.5, 1.0, fbm(rng, shape, cells=rng.uniform(2, 4), octaves=2))
        d_lab[..., 0] -= amp * patches * blur(soft, 0.1 * r0)
        signs["pih_dL"] = float(-amp)

    d_lab *= support[..., None]
    d_height *= support
    overlays = [(a * support, c) for a, c in overlays]
    meta = {"stage": stage, "severity": sev, "easi_signs": signs, "dilation_px": d, **mask_meta}
    return EczemaLayer(soft.astype(np.float32), mask, support, d_lab, d_height, overlays, meta)
