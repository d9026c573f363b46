"""How a mask image marks pixels: one rule for the training loaders and the service.

A mask marks eczema (where to edit, or a hand) in one of the ways people draw masks:

- white on black (the paper's "patho" masks, 0/255): values above half the range;
- a label map (0/1, 0/2...: every value at most half the range): every value that is not 0;
- strokes on a transparent layer (an overlay exported from a drawing tool): where it is opaque, whatever
  its colour -- as soon as one pixel is transparent, the alpha channel decides.

A pixel's value is its brightest channel, so red strokes (255, 0, 0) count as 255, not as their grey (76).
0/255 masks read exactly as `> 127` always did; the renderer's masks, and the models trained on them, rely
on it.
"""

from __future__ import annotations

import numpy as np

#: The rule in words; the errors about empty masks quote it.
MASK_RULE = ("a mask with transparency marks where it is opaque (alpha > 127; its colours are ignored); "
             "otherwise a pixel's value is its brightest channel, and a mask that has values above half its "
             "range (> 127 of 255, > 32767 of 65535) marks those (white on black); a mask whose values are all "
             "at most half (a 0/1 label map, dark strokes) marks every pixel that is not 0")


def mark(values: np.ndarray, alpha: np.ndarray | None = None, half: int = 127) -> np.ndarray:
    """bool (H, W) by MASK_RULE: `values` (H, W) the brightest channel (8-bit; `half` 32767 for 16-bit),
    `alpha` (H, W) uint8 or None. Decided on the whole mask, never on a part of it."""
    if alpha is not None and alpha.min() < 255:  # real transparency: an overlay, transparent = not marked
        overlay: np.ndarray = alpha > 127
        return overlay
    marked: np.ndarray = values > half if values.max(initial=0) > half else values > 0
    return marked
