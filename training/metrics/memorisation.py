"""Nearest-neighbour copy rate: how many generated samples are near-copies of a training sample.

Rule (a local, scale-free version of the paper code's nearest-neighbour memorisation check, close to
the "authenticity" test of Alaa et al., ICML 2022): a generated sample g whose nearest training
sample is t counts as a copy when

    ||g - t|| < alpha * r(t),   r(t) = distance from t to ITS nearest other training sample,

i.e. g sits much closer to t than t's own training neighbours do. alpha = 0.5 by default. An exact or
slightly perturbed copy of the training set scores ~1; fresh samples from the same distribution
score ~0 (in high-dimensional feature spaces a new sample is rarely twice as close to a training
sample as that sample's neighbours). The rate is a lower bound when `train` is only a subset of the
real training set; distances are taken in a feature space (features.py) or on flattened pixels.
"""

from __future__ import annotations

import numpy as np

from dermagan.training.metrics.prdc import knn_radii, pairwise_distances

DEFAULT_ALPHA = 0.5


def copy_rate(train: np.ndarray, fake: np.ndarray, alpha: float = DEFAULT_ALPHA) -> float:
    """Share of rows of `fake` [m, d] that are copies (see the module rule) of rows of `train` [n, d]."""
    assert len(train) > 1, "need at least two training samples"
    r = knn_radii(train, 1)  # (n,) train-train nearest-neighbour distance
    d = pairwise_distances(fake, train)  # (m, n)
    nearest = d.argmin(axis=1)
    return float((d[np.arange(len(fake)), nearest] < alpha * r[nearest]).mean())
