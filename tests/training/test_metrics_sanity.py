"""Metric sanity: every score gets worse under known corruptions (TRAINING.md, "Offline metrics").

Real sets A and B are independent draws of the toy renderer (all kinds and classes); the "generated"
sets are B blurred, B with noise, and B with only a few classes kept (mode dropping). Features come
from a tiny in-project extractor trained on other toy seeds, and from the random-init network.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dermagan.training.metrics import c2st, frechet, kid, memorisation, pixel, prdc, segmentation, toy
from dermagan.training.metrics import feature_training as ft
from dermagan.training.metrics.features import random_extractor

SIZE = 32


def blur(images: np.ndarray, radius: float = 2.0) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images])


def noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sets():
    a, _, _ = ft.render_feature_data(40, SIZE, seed_base=10**9, render=toy.render)
    b, _, _ = ft.render_feature_data(40, SIZE, seed_base=2 * 10**9, render=toy.render)
    pool, labels, classes = ft.render_feature_data(160, SIZE, seed_base=3 * 10**9, render=toy.render)
    keep = np.isin(labels, [classes.index("eczema/healthy"), classes.index("lesion/NV")])
    dropped = pool[keep][: len(b)]
    assert len(dropped) == len(b)
    return {"A": a, "B": b, "blur": blur(b), "noise": noise(b, 30), "drop": dropped}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The CI box has 2 cores shared with other jobs: one thread is several times faster there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spaces():
    cfg = ft.tiny()
    data = ft.render_feature_data(cfg.per_kind, cfg.render_size, render=toy.render)
    return {"inproj": ft.trained_extractor(cfg, data, log=None), "random": random_extractor(0, SIZE, (8, 16, 32, 32))}


@pytest.fixture(scope="module")
def feats(sets, spaces):
    return {space: {k: ex.features(v) for k, v in sets.items()} for space, ex in spaces.items()}


CORRUPTIONS = ("blur", "noise", "drop")


@pytest.mark.parametrize("space", ["inproj", "random"])
def test_kid_and_fd_grow_under_every_corruption(feats, space):
    f = feats[space]
    kid_floor, fd_floor = kid.kid(f["A"], f["B"], num_subsets=20)[0], frechet.frechet_distance(f["A"], f["B"])
    for c in CORRUPTIONS:
        k, fd = kid.kid(f["A"], f[c], num_subsets=20)[0], frechet.frechet_distance(f["A"], f[c])
        assert k > kid_floor, (c, k, kid_floor)
        assert fd > 1.5 * fd_floor, (c, fd, fd_floor)


@pytest.mark.parametrize("space", ["inproj", "random"])
def test_coverage_drops_under_mode_dropping_and_noise(feats, space):
    f = feats[space]
    dens0, cov0 = prdc.density_coverage(f["A"], f["B"])
    for c in CORRUPTIONS:
        dens, cov = prdc.density_coverage(f["A"], f[c])
        assert cov < cov0 - 0.05, (c, cov, cov0)
    assert prdc.density_coverage(f["A"], f["noise"])[0] < 0.8 * dens0
    assert prdc.density_coverage(f["A"], f["drop"])[1] < 0.7


@pytest.mark.parametrize("space", ["inproj", "random"])
def test_two_sample_accuracy_chance_for_real_high_for_noisy(feats, space):
    f = feats[space]
    assert 0.3 <= c2st.c2st_accuracy(f["A"], f["B"]) <= 0.7
    assert c2st.c2st_accuracy(f["A"], f["noise"]) > (0.7 if space == "inproj" else 0.9)


def test_kid_grows_with_noise_strength(sets, spaces):
    ex = spaces["inproj"]
    fa = ex.features(sets["A"])
    values = [kid.kid(fa, ex.features(noise(sets["B"], s)), num_subsets=20)[0] for s in (5, 20, 60)]
    assert values == sorted(values), values


@pytest.mark.parametrize("space", ["inproj", "random"])
def test_copy_rate_one_for_copies_zero_for_held_out(sets, spaces, space):
    ex = spaces[space]
    train = ex.features(sets["A"])
    assert memorisation.copy_rate(train, train) == 1.0
    copies = ex.features(noise(sets["A"], 0.5, seed=1))  # near-exact copies (±1 on some pixels)
    assert memorisation.copy_rate(train, copies) > 0.8
    assert memorisation.copy_rate(train, ex.features(sets["B"])) < 0.1


def test_pixel_metrics_worsen_with_noise_and_blur():
    s = toy.render("eczema", 5, size=48)
    img, mask = s.image, s.mask
    psnrs = [pixel.psnr(img, noise(img[None], sig)[0]) for sig in (2, 8, 32)]
    ssims = [pixel.ssim(img, noise(img[None], sig)[0]) for sig in (2, 8, 32)]
    l1s = [pixel.l1(img, noise(img[None], sig)[0]) for sig in (2, 8, 32)]
    assert psnrs == sorted(psnrs, reverse=True) and ssims == sorted(ssims, reverse=True) and l1s == sorted(l1s)
    assert pixel.ssim(img, blur(img[None], 2.0)[0]) < pixel.ssim(img, blur(img[None], 0.5)[0])
    assert pixel.psnr(img, img) == pixel.PSNR_CAP_DB and pixel.ssim(img, img) == pytest.approx(1.0)
    # noise only inside the mask: outside stays perfect, inside worsens
    noisy_in = np.where(mask[..., None] > 0, noise(img[None], 20)[0], img)
    assert pixel.psnr(img, noisy_in, mask, outside=True) == pixel.PSNR_CAP_DB
    assert pixel.psnr(img, noisy_in, mask) < 30 and pixel.l1(img, noisy_in, mask, outside=True) == 0


def test_biharmonic_baseline_beats_doing_nothing_on_toy_eczema():
    s = toy.render("eczema", 11, size=48)
    filled = pixel.inpaint_biharmonic(s.image, s.mask)
    assert pixel.psnr(s.healthy, filled, s.mask) > pixel.psnr(s.healthy, s.image, s.mask)
    assert np.array_equal(filled[s.mask == 0], s.image[s.mask == 0])


def test_iou_and_area():
    m = np.zeros((10, 10), bool)
    m[2:8, 2:8] = True
    shrunk = np.zeros_like(m)
    shrunk[3:7, 3:7] = True
    assert segmentation.iou(m, m) == 1.0 and segmentation.iou(m, shrunk) == pytest.approx(16 / 36)
    assert segmentation.iou(np.zeros_like(m), np.zeros_like(m)) == 1.0
    assert segmentation.area_reduction(m, shrunk) == pytest.approx(1 - 16 / 36)
    assert np.isnan(segmentation.area_reduction(np.zeros_like(m), m))
