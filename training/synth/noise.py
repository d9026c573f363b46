"""Procedural noise for the renderer: value noise, fBm, domain warp, Worley cells, blur.

All fields are whole-array numpy operations. Value noise is a random lattice interpolated with
Catmull-Rom weights written as two small matrices, so an octave of an (H, W) field costs two
matrix products: noise = Wy @ lattice @ Wx.T.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _catmull_rom_matrix(n: int, cells: float, offset: float) -> np.ndarray:
    """(n, ceil(cells) + 4) interpolation weights of n samples over `cells` lattice cells."""
    u = (np.arange(n) + 0.5) / n * cells + offset  # lattice coordinate of each sample
    i = np.floor(u).astype(int)
    t = u - i
    t2, t3 = t * t, t * t * t
    w = np.stack(
        [
            -0.5 * t3 + t2 - 0.5 * t,
            1.5 * t3 - 2.5 * t2 + 1.0,
            -1.5 * t3 + 2.0 * t2 + 0.5 * t,
            0.5 * t3 - 0.5 * t2,
        ],
        axis=1,
    )
    m = np.zeros((n, int(np.ceil(cells + offset)) + 4))
    rows = np.arange(n)[:, None]
    m[rows, i[:, None] + np.arange(4)] = w
    return m


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """(H, W) smooth noise, about `cells` features across the longer side, roughly unit variance."""
    h, w = shape
    longest = max(h, w)
    cy, cx = max(cells * h / longest, 1e-3), max(cells * w / longest, 1e-3)
    oy, ox = rng.uniform(0.0, 1.0, size=2)
    my = _catmull_rom_matrix(h, cy, oy)
    mx = _catmull_rom_matrix(w, cx, ox)
    lattice = rng.standard_normal((my.shape[1], mx.shape[1]))
    # Catmull-Rom over unit-variance lattice values has a variance of about 0.55 between knots.
    return (my @ lattice @ mx.T) / 0.75


def fbm(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cells: float,
    octaves: int = 4,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
) -> np.ndarray:
    """Fractal sum of value-noise octaves, normalised to zero mean and unit std."""
    total = np.zeros(shape)
    amp = 1.0
    for o in range(octaves):
        f = cells * lacunarity**o
        if f > max(shape):  # finer than a pixel: nothing left to add
            break
        total += amp * value_noise(rng, shape, f)
        amp *= persistence
    std = total.std()
    return (total - total.mean()) / (std if std > 1e-9 else 1.0)


def warp(field: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Sample `field` at (y + dy, x + dx) (pixels), bilinear, reflected at the borders."""
    h, w = field.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return ndimage.map_coordinates(field, [yy + dy, xx + dx], order=1, mode="reflect")


def worley(
    rng: np.random.Generator, shape: tuple[int, int], cell_px: float, jitter: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(F1, F2) distances (pixels) to the nearest and second-nearest jittered feature point.

    One feature point per square cell of `cell_px` pixels; each pixel checks the 3x3 cells around
    its own, as a stack of 9 arrays.
    """
    h, w = shape
    ny, nx = int(np.ceil(h / cell_px)) + 2, int(np.ceil(w / cell_px)) + 2
    pts = (rng.uniform(0.5 - jitter / 2, 0.5 + jitter / 2, size=(ny, nx, 2)) + np.stack(
        np.mgrid[0:ny, 0:nx], axis=-1
    ) - 1.0) * cell_px  # (ny, nx, 2) feature point of each cell, cell (1, 1) starts at pixel 0
    yy, xx = np.mgrid[0:h, 0:w]
    cy = (yy // cell_px).astype(int) + 1
    cx = (xx // cell_px).astype(int) + 1
    d = np.empty((9, h, w))
    k = 0
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            p = pts[np.clip(cy + oy, 0, ny - 1), np.clip(cx + ox, 0, nx - 1)]
            d[k] = np.hypot(p[..., 0] - yy, p[..., 1] - xx)
            k += 1
    d.sort(axis=0)
    return d[0], d[1]


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the spatial axes only (channels, if any, last)."""
    if sigma <= 0:
        return img
    s = (sigma, sigma) + (0,) * (img.ndim - 2)
    return ndimage.gaussian_filter(img, s, mode="reflect", truncate=3.0)


def smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
