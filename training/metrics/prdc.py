"""Density and coverage (Naeem, Oh, Uh, Choi & Yoo, "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML 2020).

Each real sample i gets a ball B(r_i, radius_i), radius_i = distance to its k-th nearest other real
sample. Density = how many real balls a fake sample falls in, on average, divided by k (≈ 1 when
fake ~ real; > 1 when fakes crowd the dense regions). Coverage = share of real balls that contain at
least one fake (diversity; drops under mode dropping). k = 5 as in the paper.
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64, via the Gram trick, clipped at 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest OTHER row."""
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of fake features [m, d] against real features [n, d]."""
    assert len(real) > k, f"need more than k={k} real samples, got {len(real)}"
    radii = knn_radii(real, k)  # (n,)
    inside = pairwise_distances(real, fake) < radii[:, None]  # (n, m): fake j in ball of real i
    density = inside.sum() / (k * inside.shape[1])
    coverage = inside.any(axis=1).mean()
    return float(density), float(coverage)
