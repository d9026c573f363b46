"""dermagan/masks.py: the one rule by which the training loaders and the service read a mask (every common mask
format against both readers: tests/training/test_loaders_masks.py)."""

import numpy as np

from dermagan.masks import MASK_RULE, mark


def test_white_on_black_marks_the_values_above_half() -> None:
    values = np.array([[0, 127, 128, 255]], np.uint8)
    assert mark(values).tolist() == [[False, False, True, True]]  # exactly `> 127`, as 0/255 masks always read


def test_a_mask_whose_values_are_all_at_most_half_is_a_label_map() -> None:
    assert mark(np.array([[0, 1, 2, 127]], np.uint8)).tolist() == [[False, True, True, True]]
    assert not mark(np.zeros((2, 3), np.uint8)).any()  # all black: healthy skin


def test_transparency_decides_alone_once_a_pixel_is_transparent() -> None:
    values = np.array([[0, 255, 0]], np.uint8)  # black strokes, white background ...
    alpha = np.array([[255, 0, 200]], np.uint8)  # ... on a transparent layer: the opaque pixels mark
    assert mark(values, alpha).tolist() == [[True, False, True]]
    assert mark(values, np.full_like(alpha, 255)).tolist() == [[False, True, False]]  # opaque alpha: no overlay


def test_sixteen_bit_masks_split_at_half_their_range() -> None:
    assert mark(np.array([[0, 32767, 32768]], np.uint16), half=32767).tolist() == [[False, False, True]]
    assert mark(np.array([[0, 1]], np.uint16), half=32767).tolist() == [[False, True]]
    assert "label map" in MASK_RULE and "alpha" in MASK_RULE
