"""Procedural noise for the renderer: value noise, fBm, domain warp, Worley cells, blur.

All fields are whole-array numpy operations. Smooth noise is white noise filtered in the
Fourier domain (one FFT pair per field, whatever the number of octaves).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


@lru_cache(maxsize=16)
def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """|k| of an rfft2 grid, in cycles per longer side of the image (cached, read-only)."""
    h, w = shape
    longest = max(h, w)
    ky = np.fft.fftfreq(h)[:, None] * longest
    kx = np.fft.rfftfreq(w)[None, :] * longest
    k = np.maximum(np.hypot(ky, kx), 1e-6)
    k.flags.writeable = False
    return k


def spectral_noise(rng: np.random.Generator, shape: tuple[int, int], amplitude) -> np.ndarray:
    """White noise shaped in the Fourier domain by amplitude(|k|); zero mean, unit std."""
    k = _radial_frequency(tuple(shape))
    white = np.fft.rfft2(rng.standard_normal(shape))
    field = np.fft.irfft2(white * amplitude(k), s=shape)
    field -= field.mean()
    std = field.std()
    return field / (std if std > 1e-12 else 1.0)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """(H, W) smooth isotropic noise with about `cells` features across the longer side."""
    return fbm(rng, shape, cells, octaves=1)


def fbm(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cells: float,
    octaves: int = 4,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
) -> np.ndarray:
    """Fractal noise with octaves from `cells` to cells * lacunarity**(octaves-1) cycles per
    (longer) side, each octave's amplitude `persistence` times the last; zero mean, unit std.

    Made in one step by shaping white noise in the Fourier domain -- isotropic (value noise on a
    lattice shows its grid as square blotches) and one FFT pair per field whatever the octaves.
    The field is periodic over the image, which nothing in a patch reveals.
    """
    top = cells * lacunarity ** max(octaves - 1, 0)
    # Per-mode amplitude k^(log2 p - 1) gives a band amplitude that scales by p per octave in 2-D.
    slope = np.log(persistence) / np.log(lacunarity) - 1.0

    def amplitude(k: np.ndarray) -> np.ndarray:
        low = -np.expm1(-((k / (0.7 * cells)) ** 4))
        high = np.exp(-((k / (1.4 * top)) ** 4))
        return np.exp(slope * np.log(k)) * low * high

    return spectral_noise(rng, shape, amplitude)


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
    cells = np.moveaxis(np.indices((ny, nx)), 0, -1)  # (ny, nx, 2) cell indices
    # (ny, nx, 2) feature point of each cell; cell (1, 1) starts at pixel 0
    pts = (rng.uniform(0.5 - jitter / 2, 0.5 + jitter / 2, size=(ny, nx, 2)) + cells - 1.0) * cell_px
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
