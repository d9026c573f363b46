"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., NeurIPS 2017: FID).

Computed on in-project features (features.py), so it is "FD", not FID: values compare only within
one feature space and one sample size (the estimate is biased upwards at small n; evaluate.py
always reports the real-vs-real floor at the same n next to it).
"""

from __future__ import annotations

import numpy as np


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and covariance [d, d] of features x [n, d]."""
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 2 and len(x) > 1, x.shape
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(real: np.ndarray, fake: np.ndarray) -> float:
    """Tr((S_r S_f)^(1/2)) for the sample covariances of real [n, d] and fake [m, d].

    It equals the nuclear norm of S_r^(1/2) S_f^(1/2), and also of Xr Xf^T / sqrt((n-1)(m-1)) for the
    centred data matrices -- an n x m problem. We take whichever is smaller, so the singular n < d
    case is exact and cheap, with no scipy.linalg.sqrtm (slow, and unstable on singular matrices).
    """
    xr = np.asarray(real, np.float64) - np.mean(real, axis=0)
    xf = np.asarray(fake, np.float64) - np.mean(fake, axis=0)
    n, m, d = len(xr), len(xf), xr.shape[1]
    if d <= min(n, m):
        a = _sqrt_psd(xr.T @ xr / (n - 1)) @ _sqrt_psd(xf.T @ xf / (m - 1))
    else:
        a = xr @ xf.T / np.sqrt((n - 1) * (m - 1))
    return float(np.linalg.svd(a, compute_uv=False).sum())


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of features real [n, d], fake [m, d]."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    assert real.ndim == 2 and fake.ndim == 2 and real.shape[1] == fake.shape[1] and min(len(real), len(fake)) > 1
    mean_term = np.sum((real.mean(0) - fake.mean(0)) ** 2)
    # Tr(S) = sum of per-feature variances (no d x d matrix needed)
    fd = mean_term + real.var(0, ddof=1).sum() + fake.var(0, ddof=1).sum() - 2 * trace_sqrt_product(real, fake)
    return float(max(fd, 0.0))
