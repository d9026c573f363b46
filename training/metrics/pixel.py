"""Pixel metrics inside or outside a mask, and the classical inpainting baselines.

Images are uint8 [H, W, 3] (or batches [N, H, W, 3]); masks are bool/uint8 [H, W] (non-zero = the
region). PSNR uses `skimage.metrics.peak_signal_noise_ratio` on the region's pixels; SSIM is the mean
of `skimage.metrics.structural_similarity`'s full SSIM map over the region (the map uses 7x7
windows, so pixels next to the region's border see a little of the other side). PSNR of identical
regions is infinite; it is capped at PSNR_CAP_DB so that means over images stay finite.
"""

from __future__ import annotations

import warnings

import numpy as np
import skimage.metrics
import skimage.restoration

PSNR_CAP_DB = 100.0


def _region(mask: np.ndarray, outside: bool) -> np.ndarray:
    m = np.asarray(mask) > 0
    return ~m if outside else m


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, outside: bool = False) -> float:
    """PSNR in dB (data range 255) over the mask region (or its complement, or the whole image)."""
    assert reference.shape == test.shape, (reference.shape, test.shape)
    if mask is None:
        a, b = reference, test
    else:
        sel = _region(mask, outside)
        if not sel.any():
            return float("nan")
        a, b = reference[sel], test[sel]
    if np.array_equal(a, b):
        return PSNR_CAP_DB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)
    return float(min(value, PSNR_CAP_DB))


def ssim(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, outside: bool = False) -> float:
    """Mean SSIM (data range 255, channels averaged) over the mask region / its complement / all."""
    assert reference.shape == test.shape, (reference.shape, test.shape)
    _, smap = skimage.metrics.structural_similarity(reference, test, data_range=255, channel_axis=-1, full=True)
    smap = smap.mean(axis=-1)  # (H, W)
    if mask is None:
        return float(smap.mean())
    sel = _region(mask, outside)
    return float(smap[sel].mean()) if sel.any() else float("nan")


def l1(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, outside: bool = False) -> float:
    """Mean absolute error in [0, 1] units (|Δ| / 255) over the region."""
    diff = np.abs(reference.astype(np.float64) - test.astype(np.float64)) / 255.0
    if mask is None:
        return float(diff.mean())
    sel = _region(mask, outside)
    return float(diff[sel].mean()) if sel.any() else float("nan")


#: name -> per-image function(reference, test, mask, outside=...). Explicit registry.
PIXEL_METRICS = {"psnr": psnr, "ssim": ssim, "l1": l1}


def batch_pixel_metrics(reference: np.ndarray, test: np.ndarray, masks: np.ndarray | None = None, *,
                        outside: bool = False, names: tuple[str, ...] = ("psnr", "ssim", "l1")) -> dict[str, float]:
    """Mean of each per-image metric over a batch [N, H, W, 3] (images with an empty region skipped)."""
    out = {}
    for name in names:
        fn = PIXEL_METRICS[name]
        vals = [fn(reference[i], test[i], None if masks is None else masks[i], outside=outside)
                for i in range(len(reference))]
        vals = [v for v in vals if np.isfinite(v)]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


# ---------------------------------------------------------------- classical inpainting baselines

def inpaint_biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """skimage's biharmonic inpainting of the mask region of a uint8 [H, W, 3] image."""
    out = skimage.restoration.inpaint_biharmonic(image.astype(np.float64) / 255.0, np.asarray(mask) > 0, channel_axis=-1)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def inpaint_telea(image: np.ndarray, mask: np.ndarray, radius: int = 5) -> np.ndarray:
    """OpenCV's Telea inpainting (needs the optional `cv2`; raises ImportError without it)."""
    import cv2  # optional dependency

    m = (np.asarray(mask) > 0).astype(np.uint8) * 255
    return cv2.inpaint(np.ascontiguousarray(image), m, radius, cv2.INPAINT_TELEA)


def available_inpainters() -> dict[str, "object"]:
    """name -> inpaint(image, mask) for every baseline importable here (Telea only with cv2)."""
    found = {"biharmonic": inpaint_biharmonic}
    try:
        import cv2  # noqa: F401

        found["telea"] = inpaint_telea
    except ImportError:
        pass
    return found
