"""Colour maths of the renderer: CIELAB (D65) <-> sRGB, ITA and skin-tone sampling.

Everything in the renderer works in CIELAB and converts to sRGB once at the end
(SYNTHETIC_DATA.md B.0). ITA = arctan((L* - 50) / b*) in degrees (Chardon 1991, Del Bino);
the six skin-colour categories and the ITA -> Fitzpatrick mappings are those of B.1.
"""

from __future__ import annotations

import numpy as np

# D65 reference white (2 degree observer), as used by sRGB.
_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_RGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
)
_RGB_TO_XYZ = np.linalg.inv(_XYZ_TO_RGB)
_EPS = 216 / 24389
_KAPPA = 24389 / 27

#: (name, ITA low, ITA high, b* low, b* high) -- Chardon / Del Bino categories, b* ranges of B.1.
ITA_CATEGORIES: tuple[tuple[str, float, float, float, float], ...] = (
    ("very_light", 55.0, 65.0, 10.0, 15.0),
    ("light", 41.0, 55.0, 13.0, 18.0),
    ("intermediate", 28.0, 41.0, 15.0, 20.0),
    ("tan", 10.0, 28.0, 16.0, 22.0),
    ("brown", -30.0, 10.0, 15.0, 22.0),
    ("dark", -60.0, -30.0, 8.0, 18.0),
)
CATEGORY_NAMES = tuple(c[0] for c in ITA_CATEGORIES)

#: Named ITA -> Fitzpatrick mappings (lower cut points of types I..V; below the last is VI).
FITZPATRICK_MAPPINGS: dict[str, tuple[float, ...]] = {
    "kinyanjui2019": (55.0, 41.0, 28.0, 19.0, 10.0),
    "groh2021": (40.0, 23.0, 12.0, 0.0, -25.0),
}
_ROMAN = ("I", "II", "III", "IV", "V", "VI")

# Keep sampled ITA this far inside its category, so the ITA measured on the final pixels
# (after texture, lighting, noise and 8-bit rounding) still falls in the requested category.
ITA_MARGIN_DEG = 1.5


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) CIELAB D65 -> (..., 3) sRGB float in [0, 1] (clipped)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    f = np.stack([fx, fy, fz], axis=-1)
    f3 = f**3
    xyz = np.where(f3 > _EPS, f3, (116.0 * f - 16.0) / _KAPPA) * _WHITE
    rgb = xyz @ _XYZ_TO_RGB.T
    rgb = np.clip(rgb, 0.0, 1.0)
    return np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] (float) or uint8 -> (..., 3) CIELAB D65."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float64) / 255.0
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (lin @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16.0) / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def to_uint8(lab: np.ndarray) -> np.ndarray:
    """(H, W, 3) Lab -> (H, W, 3) uint8 sRGB."""
    return np.rint(lab_to_srgb(lab) * 255.0).astype(np.uint8)


def ita_deg(L: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Individual typology angle in degrees; arctan2 keeps it defined for b* <= 0."""
    return np.degrees(np.arctan2(np.asarray(L) - 50.0, np.asarray(b)))


def ita_category(ita: float) -> str:
    """Chardon / Del Bino category of an ITA value."""
    for name, lo, _hi, _, _ in ITA_CATEGORIES[:-1]:
        if ita > lo:
            return name
    return "dark"


def category_range(name: str) -> tuple[float, float]:
    """(low, high) ITA of a category; raises ValueError listing the valid names."""
    for cname, lo, hi, _, _ in ITA_CATEGORIES:
        if cname == name:
            return lo, hi
    raise ValueError(f"unknown ita_category {name!r}; valid: {', '.join(CATEGORY_NAMES)}")


def fitzpatrick(ita: float, mapping: str = "kinyanjui2019") -> str:
    """Fitzpatrick type (I..VI) of an ITA value under a named mapping (B.1: the mappings disagree)."""
    cuts = FITZPATRICK_MAPPINGS[mapping]
    for roman, cut in zip(_ROMAN, cuts):
        if ita > cut:
            return roman
    return "VI"


def sample_tone(rng: np.random.Generator, category: str | None, face_like: bool = False) -> dict:
    """Draw a base skin colour (B.1): ITA uniform within the category, b* from its range,
    L* = 50 + b* tan(ITA), rejected outside [22, 78]; a* 7-13 (limb/hand) or 10-18 (face-like)."""
    if category is None:
        category = CATEGORY_NAMES[int(rng.integers(len(CATEGORY_NAMES)))]
    lo, hi = category_range(category)
    b_lo, b_hi = next((c[3], c[4]) for c in ITA_CATEGORIES if c[0] == category)
    for _ in range(1000):
        ita = rng.uniform(lo + ITA_MARGIN_DEG, hi - ITA_MARGIN_DEG)
        b = rng.uniform(b_lo, b_hi)
        L = 50.0 + b * np.tan(np.radians(ita))
        if 22.0 <= L <= 78.0:
            break
    a = rng.uniform(10.0, 18.0) if face_like else rng.uniform(7.0, 13.0)
    # Brown and dark skin keep a brown hue (hue angle >= ~50 degrees); with a* near or above b*
    # the low-chroma colour reads as mauve / pink, the prototype's failure on dark skin.
    a = min(a, 0.75 * b + 1.0) if ita < 10.0 else min(a, 0.9 * b + 2.0)
    return {"L": float(L), "a": float(a), "b": float(b), "ita": float(ita), "ita_category": category}
