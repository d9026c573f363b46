"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018).

The unbiased estimate of the squared MMD between two feature sets under the cubic polynomial
kernel k(x, y) = (x·y / d + 1)^3, averaged over random subsets as in stylegan2-ada's
`kernel_inception_distance.py`. Here the features come from an in-project network (see
features.py), never from Inception, so values are comparable only within one feature space.
"""

from __future__ import annotations

import numpy as np


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x [m, d] and y [n, d] with the cubic polynomial kernel."""
    assert x.ndim == 2 and y.ndim == 2 and x.shape[1] == y.shape[1], (x.shape, y.shape)
    m, n, d = len(x), len(y), x.shape[1]
    assert m > 1 and n > 1, "MMD needs at least two samples per set"
    kxx = (x @ x.T / d + 1) ** 3  # (m, m)
    kyy = (y @ y.T / d + 1) ** 3  # (n, n)
    kxy = (x @ y.T / d + 1) ** 3  # (m, n)
    # Unbiased: drop the diagonal (a sample compared with itself).
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID of `fake` against `real` features: (mean, std) of the MMD^2 over `num_subsets` random
    subsets of size min(len(real), len(fake), max_subset_size), drawn without replacement."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    m = min(len(real), len(fake), max_subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        values[i] = polynomial_mmd2(x, y)
    return float(values.mean()), float(values.std())
