"""Healthy skin: texture (B.2), hair (B.3), illumination and camera (B.4) of SYNTHETIC_DATA.md.

Texture is built as CIELAB offsets over a base tone plus a height map (micro-relief) that the
lighting shades. Skin lines are two families of domain-warped parallel furrows -- the prototype's
Worley cell network read as cracked tiles, so it is kept for the pigment network of lesions only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .color import lab_to_srgb
from .noise import blur, fbm, smoothstep, value_noise
from .shapes import bezier, grid, polyline_distance


@dataclass(frozen=True)
class LineSpec:
    """The skin-line field of one sample; lichenification re-uses it with wider spacing."""

    theta1: float
    theta2: float
    theta3: float  # a faint third family breaks the two-family lattice into irregular polygons
    spacing_px: float
    phase_warp: np.ndarray  # (H, W) radians
    modulation: np.ndarray  # (H, W) in [0.6, 1.0]
    fades: tuple  # three (H, W) fields in [0, 1], one per line family
    second_weight: float  # the crossing family is fainter
    third_weight: float


def draw_lines(rng: np.random.Generator, shape: tuple[int, int], px_mm: float) -> LineSpec:
    theta1 = rng.uniform(0.0, np.pi)
    theta2 = theta1 + np.radians(rng.uniform(60.0, 90.0))
    spacing_px = rng.uniform(0.8, 1.8) / px_mm
    phase_warp = rng.uniform(1.5, 3.0) * fbm(rng, shape, cells=rng.uniform(1.5, 3.0), octaves=2)
    # Depth varies over the patch (0.6-1.0), and each family fades in and out on its own, so the
    # furrows form broken, irregular polygons; uniform continuous furrows read as a drawn grid.
    modulation = 0.6 + 0.4 * smoothstep(-1.2, 1.2, fbm(rng, shape, cells=rng.uniform(2.0, 4.0), octaves=3))
    cells = max(shape) / spacing_px / 2.5  # fade fields vary over a few line spacings
    fades = tuple(smoothstep(-0.9, 0.6, fbm(rng, shape, cells=cells, octaves=2)) for _ in range(3))
    theta3 = theta1 + np.radians(rng.uniform(30.0, 150.0))
    return LineSpec(theta1, theta2, theta3, spacing_px, phase_warp, modulation, fades, rng.uniform(0.5, 0.85), rng.uniform(0.3, 0.6))


def line_furrows(spec: LineSpec, spacing_scale: float = 1.0, sharpness: float = 6.0) -> np.ndarray:
    """(H, W) furrow strength in [0, 1] (1 on a furrow), two crossing line families."""
    h, w = spec.phase_warp.shape
    yy, xx = grid((h, w))
    spacing = spec.spacing_px * spacing_scale
    out = np.zeros((h, w))
    families = ((spec.theta1, 1.0, 1.0, 1.0), (spec.theta2, spec.second_weight, -1.0, 1.0),
                (spec.theta3, spec.third_weight, 0.5, 1.4))
    for (theta, weight, warp_sign, stretch), fade in zip(families, spec.fades):
        phase = 2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / (spacing * stretch) + warp_sign * spec.phase_warp
        # Narrow furrows: a high power of a raised cosine; wider spacing (lichen) keeps the same
        # relative width so the furrows get wider in pixels too.
        out = np.maximum(out, weight * fade * ((1.0 + np.cos(phase)) * 0.5) ** sharpness)
    return blur(out, 0.5 * min(spacing / 8.0, 1.0)) * spec.modulation


def texture(
    rng: np.random.Generator, shape: tuple[int, int], tone: dict, px_mm: float, relief: float = 1.0,
    freckles: bool = False,
) -> tuple[np.ndarray, np.ndarray, LineSpec, dict]:
    """Base skin: (lab (H, W, 3), height (H, W), line spec, params). `relief` scales lines/pores
    (hand views are at 0.4-0.8 mm/px, where lines are barely resolved). freckles: allow
    ephelides (close-ups of light skin only; at hand scale they turn into a leopard pattern)."""
    h, w = shape
    lab = np.empty((h, w, 3))
    lab[..., 0], lab[..., 1], lab[..., 2] = tone["L"], tone["a"], tone["b"]

    # Mottling: melanin (darker and yellower) and haemoglobin (redder) unevenness.
    cells = rng.uniform(3.0, 4.0)
    melanin = fbm(rng, shape, cells, octaves=5)
    haem = fbm(rng, shape, cells * 1.3, octaves=4)
    sig_l, sig_a, sig_b = rng.uniform(0.8, 1.5), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    lab[..., 0] -= sig_l * (0.8 * melanin + 0.3 * haem)
    lab[..., 1] += sig_a * haem
    lab[..., 2] += sig_b * melanin
    lab[..., 0] += 0.5 * fbm(rng, shape, cells=max(shape) / 3.0, octaves=2)  # fine grain: not plastic
    # Furrows and pores are shadows: their L* drop scales with the skin's lightness (a fixed drop
    # draws a hard grid on dark skin).
    shadow = float(np.clip(tone["L"] / 62.0, 0.4, 1.0))

    # Skin lines (furrows darken).
    lines = draw_lines(rng, shape, px_mm)
    furrow = line_furrows(lines)
    # Lines closer than ~2 px cannot be drawn without aliasing (hand views): fade them out.
    furrow_dl = rng.uniform(1.5, 3.5) * relief * shadow * float(smoothstep(1.5, 4.0, np.array(lines.spacing_px)))
    lab[..., 0] -= furrow_dl * furrow

    # Pores: sparse Poisson dots, blurred.
    area_mm2 = h * w * px_mm * px_mm
    n_pores = rng.poisson(rng.uniform(0.5, 2.0) * area_mm2)
    pores = np.zeros(shape)
    if n_pores:
        ys, xs = rng.integers(0, h, n_pores), rng.integers(0, w, n_pores)
        np.add.at(pores, (ys, xs), rng.uniform(2.0, 5.0, n_pores))
        true_px = rng.uniform(0.05, 0.25) / px_mm / 2
        pore_px = max(true_px, 0.6)
        # Peak depth ~ dL; a pore smaller than a pixel only darkens its pixel by its area share.
        pores = blur(pores, pore_px) * (2 * np.pi * pore_px**2) ** 0.5 * min(1.0, (true_px / 0.6) ** 2)
    lab[..., 0] -= np.minimum(pores, 6.0) * relief * shadow

    # Freckles (ephelides) on some light skin: small, soft, tan-brown spots, clustered.
    n_freckles = 0
    if freckles and tone["ita"] > 35 and rng.random() < 0.3:
        n_freckles = int(rng.poisson(rng.uniform(0.02, 0.15) * area_mm2))
        if n_freckles:
            cluster = smoothstep(-0.5, 1.0, fbm(rng, shape, cells=2.0, octaves=2)).ravel()
            pick = rng.choice(h * w, size=n_freckles, p=cluster / cluster.sum())
            spots = np.zeros(shape)
            np.add.at(spots.ravel(), pick, rng.uniform(0.4, 1.0, n_freckles))
            r_px = max(rng.uniform(0.5, 1.5) / px_mm / 2, 0.7)
            spots = np.minimum(blur(spots, r_px) * 2 * np.pi * r_px * r_px, 1.0)
            lab[..., 0] -= spots * rng.uniform(3, 8)
            lab[..., 2] += spots * rng.uniform(3, 6)

    # Height: large-scale undulation plus micro-relief; the lighting shades it.
    macro = fbm(rng, shape, cells=rng.uniform(1.5, 2.5), octaves=2)
    height = 0.15 * macro * max(h, w) / 32 - 0.6 * relief * furrow - 0.3 * pores

    # Sheen: low-frequency highlights on convex parts of the macro relief.
    sheen_amp = rng.uniform(0.0, 4.0) if rng.random() < 0.7 else 0.0
    sheen = sheen_amp * smoothstep(0.3, 1.8, macro) * (0.5 + 0.5 * smoothstep(-1, 1, value_noise(rng, shape, 4)))
    lab[..., 0] += sheen
    params = {"mottle_sigma": [sig_l, sig_a, sig_b], "line_spacing_mm": lines.spacing_px * px_mm,
              "furrow_dL": furrow_dl, "pores": int(n_pores), "freckles": n_freckles, "sheen": sheen_amp}
    return lab, height, lines, params


def hair_alpha(
    rng: np.random.Generator, shape: tuple[int, int], count: int, length_px: tuple[float, float],
    width_px: tuple[float, float], direction: float | None = None, spread_deg: float = 20.0,
) -> np.ndarray:
    """(H, W) anti-aliased coverage of `count` quadratic-Bezier hairs (alpha 0.5-0.85 each)."""
    h, w = shape
    cover = np.zeros(shape)
    if direction is None:
        direction = rng.uniform(0, 2 * np.pi)
    for _ in range(count):
        length = rng.uniform(*length_px)
        ang = direction + np.radians(rng.uniform(-spread_deg, spread_deg))
        p0 = rng.uniform([-0.1 * h, -0.1 * w], [1.1 * h, 1.1 * w])
        d = np.array([np.sin(ang), np.cos(ang)]) * length
        p2 = p0 + d
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.05 * length, 2) + np.array([-d[1], d[0]]) * rng.uniform(-0.08, 0.08)
        pts = bezier(p0, p1, p2)
        half = rng.uniform(*width_px) / 2
        alpha = rng.uniform(0.5, 0.85)
        y0, x0 = np.floor(pts.min(0) - half - 2).astype(int)
        y1, x1 = np.ceil(pts.max(0) + half + 2).astype(int)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dist = polyline_distance(yy, xx, pts)
        # Coverage of the pixel by a line of width 2*half (anti-aliased).
        cov = np.clip(half + 0.5 - dist, 0.0, 1.0) * alpha
        cover[y0:y1, x0:x1] = np.maximum(cover[y0:y1, x0:x1], cov)
    return cover


def hair_color(rng: np.random.Generator, tone: dict) -> np.ndarray:
    if tone["ita"] < 20 or rng.random() < 0.6:  # dark hair
        return np.array([rng.uniform(10, 35), rng.uniform(2, 8), rng.uniform(2, 8)])
    return np.array([rng.uniform(50, 70), rng.uniform(3, 8), rng.uniform(20, 30)])


@dataclass(frozen=True)
class Lighting:
    """Illumination drawn once per sample and applied identically to healthy and lesion renders."""

    gain: np.ndarray  # (H, W) multiplies L*: linear gradient x vignette
    light: np.ndarray  # (3,) unit light direction for height shading
    shade_k: float
    wb: tuple[float, float]  # global (da*, db*)
    params: dict

    @staticmethod
    def draw(rng: np.random.Generator, shape: tuple[int, int], vignette_max: float = 0.3) -> "Lighting":
        h, w = shape
        yy, xx = grid((h, w))
        yy, xx = (yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5
        ang = rng.uniform(0, 2 * np.pi)
        grad_amp = rng.uniform(0.05, 0.15) * rng.choice([-1, 1])
        gain = 1.0 + grad_amp * 2 * (xx * np.cos(ang) + yy * np.sin(ang))
        vig = rng.uniform(0.0, vignette_max)
        gain *= 1.0 - vig * np.clip((xx**2 + yy**2) / 0.5, 0, 1) ** 1.5
        elev = np.radians(rng.uniform(30, 60))
        az = rng.uniform(0, 2 * np.pi)
        light = np.array([np.cos(elev) * np.sin(az), np.cos(elev) * np.cos(az), np.sin(elev)])
        k = rng.uniform(5, 12)
        wb = (rng.uniform(-2, 2), rng.uniform(-3, 3))
        params = {"gradient": float(grad_amp), "gradient_dir": float(ang), "vignette": float(vig),
                  "light_elev_deg": float(np.degrees(elev)), "shade_k": float(k), "white_balance": list(wb)}
        return Lighting(gain, light, k, wb, params)

    def apply(self, lab: np.ndarray, height: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(height)
        norm = np.sqrt(gx * gx + gy * gy + 1.0)
        ndotl = (-gy * self.light[0] - gx * self.light[1] + self.light[2]) / norm
        out = lab.copy()
        out[..., 0] = out[..., 0] * self.gain + self.shade_k * (ndotl - self.light[2])
        out[..., 1] += self.wb[0]
        out[..., 2] += self.wb[1]
        return out


@dataclass(frozen=True)
class Camera:
    """Optics and sensor: blur, additive noise, 8-bit rounding, optional JPEG (B.4). The noise
    field is drawn once, so a healthy and a lesion render of one seed get identical draws."""

    blur_px: float
    noise: np.ndarray  # (H, W, 3) in 8-bit units
    jpeg_quality: int | None
    params: dict

    @staticmethod
    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> "Camera":
        blur_px = rng.uniform(0.0, 1.0) ** 2 * max(shape) / 256  # mostly sharp, some soft
        sigma = rng.uniform(1.0, 3.0)
        noise = rng.standard_normal((*shape, 3)) * sigma
        q = int(rng.integers(70, 96)) if rng.random() < 0.5 else None
        return Camera(blur_px, noise, q, {"blur_px": float(blur_px), "noise_sigma": float(sigma), "jpeg_quality": q})

    def apply(self, lab: np.ndarray) -> np.ndarray:
        rgb = blur(lab_to_srgb(lab), self.blur_px) * 255.0 + self.noise
        out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        if self.jpeg_quality is not None:
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="JPEG", quality=self.jpeg_quality)
            out = np.asarray(Image.open(buf).convert("RGB"))
        return out
