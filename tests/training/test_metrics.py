"""Unit tests of the metric functions on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from dermagan.training import metrics
from dermagan.training.metrics import c2st, frechet, kid, memorisation, prdc


def gauss(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, (n, d))


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_shift():
    # unbiased: over many independent pairs of same-distribution sets the MMD^2 averages to 0
    draws = np.array([kid.polynomial_mmd2(gauss(40, 16, 2 * i), gauss(40, 16, 2 * i + 1)) for i in range(60)])
    assert abs(draws.mean()) < 3 * draws.std() / np.sqrt(len(draws))
    a = gauss(300, 16, 0)
    mean, std = kid.kid(a, gauss(300, 16, 1), num_subsets=20, max_subset_size=100)
    assert std > 0
    shifts = [kid.kid(a, gauss(300, 16, 2, shift=s), num_subsets=20)[0] for s in (0.1, 0.3, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] > mean


def test_polynomial_mmd_matches_a_direct_loop():
    x, y = gauss(5, 3, 0), gauss(4, 3, 1)
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(4) for j in range(4) if i != j])
    xy = np.mean([k(x[i], y[j]) for i in range(5) for j in range(4)])
    assert kid.polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy)


@pytest.mark.parametrize("n,d", [(200, 8), (20, 40)])  # both branches: d < n and the singular n < d
def test_frechet_matches_scipy_sqrtm(n, d):
    a = gauss(n, d, 0)
    b = gauss(n, d, 1) @ gauss(d, d, 2) * 0.3 + 0.2
    mu1, s1 = frechet.feature_stats(a)
    mu2, s2 = frechet.feature_stats(b)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)


def test_density_and_coverage():
    real = gauss(200, 4, 0)
    dens, cov = prdc.density_coverage(real, real)
    assert cov == 1.0 and dens > 0.9
    dens_far, cov_far = prdc.density_coverage(real, gauss(200, 4, 1, shift=10))
    assert dens_far == 0 and cov_far == 0
    # all fakes on one real point: dense there, covers little
    dens_one, cov_one = prdc.density_coverage(real, np.repeat(real[:1], 200, 0))
    assert cov_one < 0.1
    with pytest.raises(AssertionError):
        prdc.density_coverage(real[:5], real)


def test_copy_rate_rule():
    train = gauss(100, 8, 0)
    assert memorisation.copy_rate(train, train + 1e-6) == 1.0
    assert memorisation.copy_rate(train, gauss(100, 8, 1)) < 0.05
    half = np.vstack([train[:50] + 1e-6, gauss(50, 8, 2)])
    assert memorisation.copy_rate(train, half) == pytest.approx(0.5, abs=0.05)


def test_c2st_chance_and_separable():
    assert 0.35 < c2st.c2st_accuracy(gauss(300, 8, 0), gauss(300, 8, 1)) < 0.65
    # Bayes accuracy with mean distance sqrt(8): Phi(sqrt(2)) = 0.92
    assert 0.87 < c2st.c2st_accuracy(gauss(300, 8, 0), gauss(300, 8, 1, shift=1.0)) < 0.96
    assert c2st.c2st_accuracy(gauss(300, 8, 0), gauss(300, 8, 1, shift=2.0)) > 0.97


def test_registry_is_explicit_and_rejects_unknown_names():
    assert set(metrics.METRICS) == {"kid", "fd", "density", "coverage", "c2st", "copy_rate"}
    a, b = gauss(60, 4, 0), gauss(60, 4, 1, shift=2)
    for name, m in metrics.METRICS.items():
        if name == "copy_rate":  # worse = more copies (test_copy_rate_rule)
            good, bad = m.fn(a, b), m.fn(a, a)
        else:  # worse = further from the reference
            good, bad = m.fn(a, gauss(60, 4, 3)), m.fn(a, b)
        assert (bad > good) if m.better == "lower" else (bad < good), name
    with pytest.raises(ValueError, match="valid metrics are"):
        metrics.get("fid")
    assert metrics.get("psnr").better == "higher"


def test_feature_spaces_onnx_round_trip_and_seeded_random_net(tmp_path):
    from dermagan.training.metrics import features

    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    net = features.build_feature_net(num_classes=3, width=4, feature_dim=8)
    classes = ["eczema/eczema", "eczema/healthy", "hand/healthy"]
    path = features.save_extractor(net, tmp_path / "fx.onnx", classes=classes, input_size=32, facts={"seed": 0})
    loaded = features.load_extractor(path)
    direct = features.torch_extractor(net, name="t", input_size=32, classes=classes)
    assert loaded.classes == classes and loaded.input_size == 32
    np.testing.assert_allclose(loaded.features(images), direct.features(images), atol=1e-4)
    assert loaded.eczema_score(images).shape == (5,)
    r0, r0b, r1 = (features.random_extractor(s, 16, (4, 8)) for s in (0, 0, 1))
    assert np.array_equal(r0.features(images), r0b.features(images))
    assert not np.allclose(r0.features(images), r1.features(images))
    with pytest.raises(ValueError, match="lacks the classes"):
        r0.eczema_score(images)


def test_feature_extractor_reports_its_accuracy_on_renderer_seeds_it_never_saw():
    """The extractor's train/validation split is by image (kept: the shipped extractor's recipe must reproduce
    it), so a seed's healthy and eczema twins can fall one on each side; the accuracy on the held-out images
    whose seed has no image in training is reported beside it."""
    import dataclasses

    import torch

    from dermagan.training.metrics import feature_training as ft
    from dermagan.training.metrics import toy

    cfg = dataclasses.replace(ft.tiny(), per_kind=12, steps=3, val_fraction=0.3)
    images, labels, classes = data = ft.render_feature_data(cfg.per_kind, cfg.render_size, render=toy.render)
    groups = ft.seed_groups(labels, classes)
    names = [classes[i] for i in labels]
    assert len(set(groups)) == 3 * cfg.per_kind  # one group per renderer seed of each kind
    for i in range(1, len(names)):
        if names[i].endswith("/eczema"):  # the twin of the healthy image before it
            assert groups[i] == groups[i - 1] and names[i - 1] == names[i].rpartition("/")[0] + "/healthy"
    twins = [g for g in set(groups) if (groups == g).sum() == 2]
    assert twins, "the toy renderer gives healthy + eczema twins"

    _, _, facts = ft.train_feature_net(cfg, data, log=None)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    n_val = int(len(images) * cfg.val_fraction)
    val, train = order[:n_val], order[n_val:]
    unseen = [i for i in val if groups[i] not in set(groups[train])]
    assert 0 < len(unseen) < n_val  # some held-out images have their twin in training
    assert facts["n_val_unseen_seeds"] == len(unseen) and 0 <= facts["val_accuracy_unseen_seeds"] <= 1
    assert 0 <= facts["val_accuracy"] <= 1
