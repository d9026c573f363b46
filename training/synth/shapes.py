"""Vectorised 2-D geometry for the renderer: distances to segments and polylines, smooth union,
irregular polar blobs. Points are (y, x) in pixels unless a function says otherwise."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) pixel coordinates, float64 (cached, read-only)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def segment_distance(yy: np.ndarray, xx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point to segments a[k] -> b[k]; a, b: (K, 2) -> (K, *yy.shape)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    extra = (None,) * yy.ndim
    ay, ax = a[:, 0][(...,) + extra], a[:, 1][(...,) + extra]
    dy, dx = (b[:, 0] - a[:, 0])[(...,) + extra], (b[:, 1] - a[:, 1])[(...,) + extra]
    py, px = yy[None] - ay, xx[None] - ax
    t = np.clip((py * dy + px * dx) / np.maximum(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    return np.hypot(py - t * dy, px - t * dx)


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 17) -> np.ndarray:
    """(n, 2) points of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def polyline_distance(yy: np.ndarray, xx: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from each point to the polyline through pts (N, 2)."""
    return segment_distance(yy, xx, pts[:-1], pts[1:]).min(axis=0)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth union of two signed distance fields (Quilez), blend width k."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def polar_blob(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, center: "np.ndarray | tuple[float, float]", r0: float,
    a_max: float = 0.3, harmonics: range = range(2, 9), aspect: float = 1.0, angle: float = 0.0,
) -> np.ndarray:
    """Signed 'radius minus distance' field (pixels, > 0 inside) of an irregular polar blob:
    r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)), a_k ~ U(0, a_max / k)."""
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, (-dx * s + dy * c) * aspect  # elongate along u
    rho = np.hypot(u, v)
    ks = np.asarray(list(harmonics), dtype=np.int64)
    amps = rng.uniform(0.0, a_max / ks)
    phis = rng.uniform(0.0, 2 * np.pi, len(ks))
    # sum_k a_k cos(k theta + phi_k) = Re sum_k c_k z^k with z = e^{i theta}, c_k = a_k e^{i phi_k};
    # Horner's rule over the complex unit vector costs a few multiplies instead of a cos per k.
    z = (u + 1j * v) / np.maximum(rho, 1e-9)
    coef = np.zeros(int(ks.max()) + 1, dtype=np.complex128)
    coef[ks] = amps * np.exp(1j * phis)
    acc = np.full(z.shape, coef[-1])
    for c in coef[-2::-1]:
        acc = acc * z + c
    return r0 * (1.0 + acc.real) - rho
