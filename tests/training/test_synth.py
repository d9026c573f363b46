"""The procedural renderer (training/synth): determinism, triplets, masks, skin tone."""

import numpy as np
import pytest
from scipy import ndimage

from dermagan.training.synth import KINDS, SynthSample, render
from dermagan.training.synth.color import (
    CATEGORY_NAMES,
    category_range,
    fitzpatrick,
    ita_category,
    ita_deg,
    lab_to_srgb,
    srgb_to_lab,
)

SIZE = 48


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a Euclidean disc of `radius` pixels."""
    return ndimage.distance_transform_edt(mask == 0) <= radius


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_the_same_bytes(kind):
    a, b = render(kind, 7, SIZE), render(kind, 7, SIZE)
    assert isinstance(a, SynthSample)
    assert a.image.dtype == np.uint8 and a.image.shape == (SIZE, SIZE, 3)
    assert a.image.tobytes() == b.image.tobytes()
    for field in ("healthy", "mask", "hand"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or x.tobytes() == y.tobytes()
    assert a.meta == b.meta and a.label == b.label


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_differ(kind):
    images = [render(kind, s, SIZE).image for s in range(3)]
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[1], images[2])


def test_any_size_and_non_square():
    s = render("eczema", 1, (40, 72), grade=2)
    assert s.image.shape == (40, 72, 3) and s.mask.shape == (40, 72) and s.soft_mask.shape == (40, 72)
    assert s.soft_mask.dtype == np.float32


def test_bad_arguments_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="eczema, hand, lesion"):
        render("mole", 0)
    with pytest.raises(ValueError, match="valid: ita_category, grade"):
        render("eczema", 0, colour="red")
    with pytest.raises(ValueError, match="very_light"):
        render("eczema", 0, ita_category="pale")
    with pytest.raises(ValueError, match="grade"):
        render("eczema", 0, grade=5)


@pytest.mark.parametrize("kind,seeds", [("eczema", range(6)), ("hand", range(4))])
def test_triplet_is_pixel_exact_outside_the_dilated_mask(kind, seeds):
    for seed in seeds:
        s = render(kind, seed, SIZE, grade=1 + seed % 3)
        outside = ~_dilate(s.mask, s.meta["eczema"]["dilation_px"])
        assert np.array_equal(s.image[outside], s.healthy[outside]), f"seed {seed}: change outside the dilated mask"
        inside = s.mask > 0
        assert (s.image[inside] != s.healthy[inside]).any(), f"seed {seed}: no change inside the mask"


def test_grade_zero_is_healthy_and_grades_share_the_skin():
    samples = [render("eczema", 3, SIZE, grade=g) for g in range(4)]
    assert np.array_equal(samples[0].image, samples[0].healthy) and samples[0].mask.max() == 0
    for s in samples[1:]:
        assert np.array_equal(s.healthy, samples[0].healthy)  # the same skin at every grade
        assert s.mask.max() == 255 and set(np.unique(s.mask)) <= {0, 255}
    # Severity rises with the grade: mean colour change inside the (shared) lesion grows.
    change = [np.abs(s.image.astype(int) - s.healthy).sum() for s in samples]
    assert change[0] == 0 < change[1] < change[3]


@pytest.mark.parametrize("kind", ["eczema", "hand"])
def test_masks_are_non_empty_from_grade_one(kind):
    for seed in range(8):
        s = render(kind, seed, SIZE, grade=1 + seed % 3)
        assert (s.mask == 255).sum() > 0, f"{kind} seed {seed}: empty mask at grade {1 + seed % 3}"
        assert s.soft_mask.min() >= 0 and s.soft_mask.max() <= 1


def test_hand_eczema_stays_inside_the_hand():
    for seed in range(8):
        s = render("hand", seed, SIZE, grade=3)
        assert s.hand is not None and set(np.unique(s.hand)) <= {0, 255}
        assert 0.05 < (s.hand > 0).mean() < 0.9
        assert not ((s.mask > 0) & (s.hand == 0)).any(), f"seed {seed}: eczema outside the hand"


def _measured_ita(rgb: np.ndarray, where: np.ndarray) -> float:
    lab = srgb_to_lab(rgb)
    return float(np.median(ita_deg(lab[..., 0], lab[..., 2])[where]))


@pytest.mark.parametrize("category", CATEGORY_NAMES)
def test_ita_of_the_rendered_skin_falls_in_the_requested_category(category):
    lo, hi = category_range(category)
    for seed in range(3):
        s = render("eczema", seed, SIZE, ita_category=category, grade=2)
        ita = _measured_ita(s.healthy, np.ones(s.healthy.shape[:2], bool))
        assert lo < ita <= hi, f"seed {seed}: measured ITA {ita:.1f} outside {category} ({lo}, {hi}]"
        assert s.meta["ita_category"] == category == ita_category(s.meta["ita"])
        assert set(s.meta["fitzpatrick"]) == {"kinyanjui2019", "groh2021"}


def test_ita_of_a_dorsal_hand():
    for category in ("light", "dark"):
        lo, hi = category_range(category)
        s = render("hand", 2, 64, ita_category=category, view="dorsal", grade=0)
        core = ndimage.binary_erosion(s.hand > 0, iterations=2)
        assert lo < _measured_ita(s.healthy, core) <= hi


def test_colour_conversion_round_trips_and_fitzpatrick_mappings():
    lab = np.array([[65.0, 10.0, 15.0], [30.0, 12.0, 12.0], [50.0, -5.0, -10.0]])
    assert np.allclose(srgb_to_lab(lab_to_srgb(lab)), lab, atol=1e-6)
    assert srgb_to_lab(np.array([255, 255, 255], np.uint8))[0] == pytest.approx(100.0, abs=1e-3)
    assert fitzpatrick(60.0) == "I" and fitzpatrick(-40.0) == "VI"
    assert fitzpatrick(30.0, "groh2021") == "II" and fitzpatrick(30.0, "kinyanjui2019") == "III"


@pytest.mark.parametrize("label", ["NV", "MEL"])
def test_lesions_carry_their_class(label):
    s = render("lesion", 4, SIZE, label=label)
    assert s.label == label and s.healthy is None and s.mask is None
    assert s.meta["lesion"]["subtype"] in (("common", "atypical") if label == "NV" else ("melanoma",))


def test_dark_skin_erythema_is_not_pink():
    """SYNTHETIC_DATA.md B.5: on dark skin erythema is violaceous / grey-brown, and darker."""
    s = render("eczema", 5, 64, ita_category="dark", grade=3)
    inside = s.mask > 0
    ecz, healthy = srgb_to_lab(s.image)[inside], srgb_to_lab(s.healthy)[inside]
    assert np.median(ecz[:, 0] - healthy[:, 0]) < 0  # darker, not lighter
    assert np.median(ecz[:, 1] - healthy[:, 1]) < 8  # a* shift far below the light-skin grade 3 (+12-20)
