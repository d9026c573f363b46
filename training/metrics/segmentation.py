"""Mask metrics: IoU of two binary masks and the positive area a segmenter finds.

Used for add (IoU of the segmenter's mask on the output vs the requested mask, relative to the
segmenter's own IoU on real eczema) and remove (segmenter-positive area before/after).
"""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary masks (any shape; non-zero = positive). Both empty -> 1."""
    p, t = np.asarray(pred) > 0, np.asarray(target) > 0
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def mean_iou(preds: np.ndarray, targets: np.ndarray) -> float:
    """Mean per-image IoU over a batch [N, H, W]."""
    return float(np.mean([iou(p, t) for p, t in zip(preds, targets)]))


def positive_fraction(masks: np.ndarray) -> float:
    """Share of positive pixels over a batch of binary masks."""
    return float((np.asarray(masks) > 0).mean())


def area_reduction(before: np.ndarray, after: np.ndarray) -> float:
    """1 - positive area after / positive area before (1 = all gone, 0 = unchanged, < 0 = grew)."""
    a0 = (np.asarray(before) > 0).sum()
    a1 = (np.asarray(after) > 0).sum()
    return float("nan") if a0 == 0 else float(1.0 - a1 / a0)
