"""Classifier two-sample test (Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017).

A logistic regression learns to tell real from generated features on one half of the samples; its
accuracy on the other half is the score. ~0.5: indistinguishable; 1.0: trivially separable.
Plain numpy + scipy L-BFGS (no scikit-learn); balanced classes, standardised features, L2 penalty.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, max_iter: int = 200) -> np.ndarray:
    """Weights [d + 1] (last = bias) of an L2-regularised logistic regression, y in {0, 1}."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ w
        # log(1 + e^z) - y z, computed stably
        loss = np.logaddexp(0, z).mean() - (y * z).mean() + 0.5 * l2 * (w[:-1] ** 2).sum()
        p = 0.5 * (1 + np.tanh(0.5 * z))  # sigmoid without overflow
        grad = xb.T @ (p - y) / n
        grad[:-1] += l2 * w[:-1]
        return float(loss), grad

    res = scipy.optimize.minimize(loss_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter})
    return res.x


def c2st_accuracy(real: np.ndarray, fake: np.ndarray, *, test_fraction: float = 0.5, l2: float = 1e-2,
                  seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression separating real [n, d] from fake [m, d] features."""
    rng = np.random.default_rng(seed)
    n = min(len(real), len(fake))  # balance the classes so 0.5 is chance
    a = np.asarray(real, np.float64)[rng.permutation(len(real))[:n]]
    b = np.asarray(fake, np.float64)[rng.permutation(len(fake))[:n]]
    n_test = max(1, int(round(n * test_fraction)))
    assert n - n_test >= 2, f"too few samples for a two-sample test: {n}"
    x_train = np.vstack([a[n_test:], b[n_test:]])
    y_train = np.r_[np.zeros(n - n_test), np.ones(n - n_test)]
    x_test = np.vstack([a[:n_test], b[:n_test]])
    y_test = np.r_[np.zeros(n_test), np.ones(n_test)]
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    w = fit_logistic((x_train - mu) / sd, y_train, l2=l2)
    z = np.hstack([(x_test - mu) / sd, np.ones((len(x_test), 1))]) @ w
    return float(((z > 0) == (y_test == 1)).mean())
