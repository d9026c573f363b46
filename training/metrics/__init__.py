"""Offline quality metrics of `dermagan evaluate`: pure functions on arrays, one file per family.

| family          | file              | metrics                                                |
|-----------------|-------------------|--------------------------------------------------------|
| kernel distance | kid.py            | KID (unbiased cubic-polynomial MMD^2, subsets)          |
| Fréchet         | frechet.py        | FD (Fréchet distance of Gaussian fits)                  |
| manifold        | prdc.py           | density, coverage (Naeem et al. 2020, k = 5)           |
| memorisation    | memorisation.py   | nearest-neighbour copy rate                              |
| two-sample test | c2st.py           | classifier two-sample accuracy                          |
| pixel           | pixel.py          | PSNR / SSIM / L1 in or outside a mask; inpainting baselines |
| mask            | segmentation.py   | IoU, positive area, area reduction                      |
| report          | report.py         | issue 5's targets (pass/miss), mean/std over seeds, Markdown |

Feature spaces (features.py, feature_training.py): an in-project classifier trained on the
procedural data, and a seeded random-init network. toy.py is a fast stand-in renderer for tests.
Which metrics each task gets is the `EVALUATORS` registry in training/evaluate.py. `METRICS` below is the explicit registry that
evaluate.py and the sanity tests iterate over: name -> (function, which direction is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from dermagan.training.metrics import c2st, frechet, kid, memorisation, pixel, prdc


@dataclass(frozen=True)
class Metric:
    fn: Callable[..., float]
    better: Literal["lower", "higher"]
    inputs: Literal["features", "images"]
    doc: str


def _kid_mean(real, fake, **kw) -> float:
    return kid.kid(real, fake, **kw)[0]


def _density(real, fake, k: int = 5) -> float:
    return prdc.density_coverage(real, fake, k)[0]


def _coverage(real, fake, k: int = 5) -> float:
    return prdc.density_coverage(real, fake, k)[1]


#: Distribution metrics: fn(real_or_train_features, fake_features) -> float. Explicit registry.
METRICS: dict[str, Metric] = {
    "kid": Metric(_kid_mean, "lower", "features", "KID: unbiased polynomial-kernel MMD^2 (mean over subsets)"),
    "fd": Metric(frechet.frechet_distance, "lower", "features", "Fréchet distance of Gaussian fits"),
    "density": Metric(_density, "higher", "features", "density (Naeem et al. 2020, k=5); ~1 when fake ~ real"),
    "coverage": Metric(_coverage, "higher", "features", "coverage (Naeem et al. 2020, k=5); diversity"),
    "c2st": Metric(c2st.c2st_accuracy, "lower", "features", "held-out accuracy of real-vs-fake logistic regression"),
    "copy_rate": Metric(memorisation.copy_rate, "lower", "features",
                        "share of fakes nearer a training sample than alpha x its own NN distance"),
}

#: Per-image pixel metrics: fn(reference, test, mask, outside=False) -> float.
PIXEL_METRICS: dict[str, Metric] = {
    "psnr": Metric(pixel.psnr, "higher", "images", "PSNR in dB (capped at 100)"),
    "ssim": Metric(pixel.ssim, "higher", "images", "mean SSIM map over the region"),
    "l1": Metric(pixel.l1, "lower", "images", "mean |Δ| / 255 over the region"),
}


def get(name: str) -> Metric:
    """The registered metric `name`; an unknown name raises ValueError listing the valid ones."""
    table = {**METRICS, **PIXEL_METRICS}
    if name not in table:
        raise ValueError(f"unknown metric {name!r}; valid metrics are {sorted(table)}")
    return table[name]
