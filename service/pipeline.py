"""Per-task pre- and post-processing around one model run: bytes in -> tensors -> bytes out.

Pure functions of `imaging` (no HTTP, no ONNX Runtime) so the benchmark's codec measurement and
the unit tests use exactly what the service runs. Each task is a `plan_*` (decode, validate, build
the model's input rows) and a `finish_*` (model output rows -> PNG, or an edit's chosen format).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO

import numpy as np

from dermagan.masks import MASK_RULE
from dermagan.service import imaging
from dermagan.service.errors import EmptyMask, InvalidParameter, PayloadTooLarge

Arrays = dict[str, np.ndarray]


# ---- mask-guided edit (add / remove) ---------------------------------------------------------

#: Removing eczema from an image larger than the model: the photograph's fine detail is put back
#: only where the model changed little (`imaging.add_detail`'s fade, in 8-bit levels), so the
#: eczema's own fine texture (fissures, scale) mostly goes with its colour while the skin the model
#: left alone keeps its hair and pores. Chosen by eye on 1024 px procedural eczema and on hair-covered
#: skin among 0 (all detail: the fissures stay sharp), 12, 24 and 48 (2026-12-04).
REMOVED_DETAIL_FADE = 12.0


@dataclass(frozen=True)
class MaskedEdit:
    image: imaging.DecodedImage
    mask: np.ndarray  # bool (H, W) at the image's size
    box: imaging.Box  # the crop fed to the model
    crop: np.ndarray  # uint8 (mh, mw, 3): the box resized to the model's resolution
    inputs: Arrays  # image [1, 3, mh, mw], mask [1, 1, mh, mw]
    output: imaging.OutputFormat = imaging.OutputFormat()


def _decode_for(image_bytes: bytes, max_pixels: int, output: imaging.OutputFormat) -> imaging.DecodedImage:
    """The decoded image, refused (before any model runs) when `output` cannot carry it: a side longer
    than the format holds (from the header, before decoding), or transparent pixels in a JPEG. An alpha
    channel that is opaque everywhere is no transparency: for JPEG it is dropped (the same picture)."""
    most = imaging.OutputFormat.MAX_SIDE.get(output.kind)
    hw = imaging.header_size(image_bytes) if most is not None else None
    if hw is not None and most is not None and hw[0] * hw[1] <= max_pixels and max(hw) > most:
        (h, w), fmt = hw, output.kind
        side = f"{w} px wide" if w >= h else f"{h} px high"
        raise InvalidParameter(f"format {fmt} allows at most {most} px a side; this image is {side} ({w}x{h}): "
                               "ask for png")
    image = imaging.decode_image(image_bytes, max_pixels=max_pixels)
    if image.alpha is not None and output.kind == "jpeg":
        if int(image.alpha.min()) < 255:
            raise InvalidParameter("format jpeg has no alpha channel and this image has transparent pixels "
                                   "(alpha below 255); ask for png or webp, which keep them")
        image = replace(image, alpha=None)
    return image


def plan_masked_edit(image_bytes: bytes, mask_bytes: bytes, model_hw: tuple[int, int], *,
                     max_pixels: int, dilate_px: int, context: float,
                     output: imaging.OutputFormat = imaging.OutputFormat()) -> MaskedEdit:
    """Decode and validate, then crop the mask's box (with context) and resize it to the model's input."""
    image = _decode_for(image_bytes, max_pixels, output)
    mask = imaging.decode_mask(mask_bytes, size=image.size, max_pixels=max_pixels, image_turned=image.turned)
    bbox = imaging.mask_bbox(mask)
    if bbox is None:
        raise EmptyMask(f"mask is empty: it marks no pixel ({MASK_RULE})")
    box = imaging.context_box(bbox, image.size, model_hw, grow_px=dilate_px, context=context)
    t, l, b, r = box
    crop = imaging.resize_rgb(image.rgb[t:b, l:r], model_hw)
    crop_mask = imaging.resize_mask(mask[t:b, l:r], model_hw)
    inputs = {"image": imaging.to_model_input(crop)[None],
              "mask": imaging.mask_to_model_input(crop_mask)[None]}
    return MaskedEdit(image, mask, box, crop, inputs, output)


def finish_masked_edit(plan: MaskedEdit, output: np.ndarray, *, dilate_px: int, fade: float = 0.0) -> bytes:
    """output: the model's image row [3, mh, mw] -> the whole image (in `plan.output`'s format), edited
    only near the mask.

    The feathered alpha is zero farther than `dilate_px` from the mask, so only the window of the
    crop within that reach is converted and composited (the same pixels as doing the whole crop: the
    alpha's box sums see every mask pixel from inside the window); the rest stays the original.

    A box larger than the model's resolution was shrunk to it: the output, resized back, has lost
    the image's finer detail (skin texture, hair, pores) with it. That detail is put back -- output +
    (box - box shrunk and resized back), the "frequency separation" of photo retouching -- so the
    model sets what changes at its own scale (colour, patches, lesions) and the photograph keeps its
    resolution; a pixel the model left unchanged comes back as it was.
    """
    t, l, b, r = plan.box
    result = plan.image.rgb.copy()
    crop_mask = plan.mask[t:b, l:r]
    bbox = imaging.mask_bbox(crop_mask)
    if bbox is not None:
        y0, x0, y1, x1 = imaging.grow_box(bbox, dilate_px, crop_mask.shape)
        if output.shape[1:] == crop_mask.shape:
            edited = imaging.from_model_output(output[:, y0:y1, x0:x1])
        else:
            edited = imaging.resize_rgb(imaging.from_model_output(output), crop_mask.shape)[y0:y1, x0:x1]
            blurred = imaging.resize_rgb(plan.crop, crop_mask.shape)[y0:y1, x0:x1]
            edited = imaging.add_detail(edited, result[t + y0:t + y1, l + x0:l + x1], blurred, fade=fade)
        alpha = imaging.feather_alpha(crop_mask[y0:y1, x0:x1], dilate_px)
        window = result[t + y0:t + y1, l + x0:l + x1]
        window[...] = imaging.composite(window, edited, alpha)
    return imaging.encode_image(result, plan.image.alpha, plan.output)


# ---- mask-free edit (CycleGAN over overlapping tiles) ----------------------------------------

@dataclass(frozen=True)
class TiledEdit:
    image: imaging.DecodedImage
    work: np.ndarray  # uint8 (h, w, 3): the image at the working resolution (itself when not shrunk)
    padded: np.ndarray  # uint8 (h', w', 3): `work` edge-padded up to at least one tile
    tile_hw: tuple[int, int]
    overlap: tuple[int, int]
    origins: list[tuple[int, int]]  # top-left of every tile
    output: imaging.OutputFormat = imaging.OutputFormat()

    @property
    def tiles(self) -> int:
        return len(self.origins)

    def chunks(self, size: int) -> Iterator[tuple[list[tuple[int, int]], Arrays]]:
        """Tiles in chunks of `size` rows: (origins, {"image": [n, 3, th, tw]}) - memory stays bounded."""
        th, tw = self.tile_hw
        for i in range(0, len(self.origins), size):
            origins = self.origins[i:i + size]
            rows = np.stack([imaging.to_model_input(self.padded[y:y + th, x:x + tw]) for y, x in origins])
            yield origins, {"image": rows}


def work_size(image_hw: tuple[int, int], work_px: int) -> tuple[int, int]:
    """(h, w) of the image with its shorter side at `work_px` -- never larger than the image."""
    h, w = image_hw
    short = min(h, w)
    if short <= work_px:
        return h, w
    return max(round(h * work_px / short), 1), max(round(w * work_px / short), 1)


def padded_size(image_hw: tuple[int, int], model_hw: tuple[int, int], work_px: int) -> tuple[int, int]:
    """(h, w) of a mask-free edit's working area: the image at `work_size`, edge-padded up to one tile."""
    h, w = work_size(image_hw, work_px)
    return max(h, model_hw[0]), max(w, model_hw[1])


def check_padded_area(image_hw: tuple[int, int], model_hw: tuple[int, int], work_px: int, max_pixels: int) -> int:
    """The pixels of a mask-free edit's working area (`padded_size`); 413 when they are over `max_pixels`
    (and more than one tile, which any image may have).

    Shrinking never enlarges an image, so only a side shorter than the tile is padded, and only a very thin
    image's padding is large: 1 x 2,000,000 px became 128 x 2,000,000 (730 MiB, and 16 bytes a pixel of it, 3.8
    GiB, to blend the tiles) from an upload of a few KB."""
    ph, pw = padded_size(image_hw, model_hw, work_px)
    limit = max(max_pixels, model_hw[0] * model_hw[1])
    if ph * pw <= limit:
        return ph * pw
    (h, w), (th, tw) = image_hw, model_hw
    raise PayloadTooLarge(
        f"image is {w}x{h}, an aspect ratio of {max(h, w) / min(h, w):,.0f}:1, too thin for an edit without a "
        f"mask: the model works on {tw}x{th} tiles, so it would be padded to {pw}x{ph} = {ph * pw} pixels, over "
        f"the limit of {max_pixels} (DERMAGAN_MAX_PIXELS); crop it into less elongated pieces, or send a mask")


#: What one pixel of the image budget stands for: the bytes an edit with a mask holds for each pixel of its image
#: while it waits for the model -- the decoded RGB (3) and the mask (1); measured 4.1 on a 2000x1500 JPEG. An
#: image with an alpha channel holds one byte a pixel more (its alpha, kept for the answer): it counts 5/4.
BUDGET_BYTES_PER_PIXEL = 4


def tiled_bytes(image_hw: tuple[int, int], model_hw: tuple[int, int], work_px: int, alpha: bool = False) -> int:
    """The bytes a mask-free edit holds from its plan to its answer: its decoded image (3 a pixel, 4 with
    `alpha`) and, for each pixel of its working area, the blending's float32 sums (12) and weights (4), plus a
    shrunk copy (3) where the image is shrunk and a padded copy (3) where it is padded (`plan_tiled_edit`,
    `TileBlender`). At full resolution that is ~19 bytes a pixel, against a masked edit's ~4 (measured 19.0
    and 4.1)."""
    h, w = image_hw
    wh, ww = work_size(image_hw, work_px)
    ph, pw = padded_size(image_hw, model_hw, work_px)
    return ((4 if alpha else 3) * h * w + 16 * ph * pw + (3 * wh * ww if (wh, ww) != (h, w) else 0)
            + (3 * ph * pw if (ph, pw) != (wh, ww) else 0))


def image_pixels(image_bytes: bytes | IO[bytes], max_pixels: int) -> int:
    """The pixels an edit with a mask or a segmentation of `image_bytes` holds in the image budget, from its
    header (nothing decoded): its image's, 5/4 of them when it has an alpha channel (`BUDGET_BYTES_PER_PIXEL`).
    0 for an image the decoder refuses at once (unreadable, over `max_pixels`), so that a header declaring a
    huge image cannot hold the line."""
    head = imaging.header(image_bytes)
    if head is None or (pixels := head.height * head.width) > max_pixels:
        return 0
    return -(-pixels * (BUDGET_BYTES_PER_PIXEL + 1) // BUDGET_BYTES_PER_PIXEL) if head.alpha else pixels


def tiled_pixels(image_bytes: bytes | IO[bytes], model_hw: tuple[int, int], *, work_px: int, max_pixels: int) -> int:
    """The pixels a mask-free edit of `image_bytes` holds in the image budget, from its header (nothing
    decoded): its image's pixels, or what its working memory (`tiled_bytes`) is worth in pixels of an edit
    with a mask (`BUDGET_BYTES_PER_PIXEL`), whichever is more -- a working area as large as the image counts
    ~5 times. A working area over the limit is refused (`check_padded_area`). 0 for an image the decoder
    refuses at once (unreadable, over `max_pixels`)."""
    head = imaging.header(image_bytes)
    if head is None or head.height * head.width > max_pixels:
        return 0
    hw = (head.height, head.width)
    check_padded_area(hw, model_hw, work_px, max_pixels)
    return max(hw[0] * hw[1], -(-tiled_bytes(hw, model_hw, work_px, head.alpha) // BUDGET_BYTES_PER_PIXEL))


def plan_tiled_edit(image_bytes: bytes, model_hw: tuple[int, int], *, max_pixels: int, overlap: float,
                    work_px: int, output: imaging.OutputFormat = imaging.OutputFormat()) -> TiledEdit:
    """The image shrunk so that its shorter side is `work_px` (the scale at which the model sees it),
    then cut into overlapping tiles of the model's resolution. A working area over `max_pixels` (a very
    thin image, padded to the tile) is refused from the header, before decoding."""
    tiled_pixels(image_bytes, model_hw, work_px=work_px, max_pixels=max_pixels)
    image = _decode_for(image_bytes, max_pixels, output)
    check_padded_area(image.size, model_hw, work_px, max_pixels)  # as shown: an orientation the header hid
    th, tw = model_hw
    work = imaging.resize_rgb(image.rgb, work_size(image.size, work_px))
    padded = imaging.pad_to(work, model_hw)
    oh, ow = int(round(th * overlap)), int(round(tw * overlap))
    ys = imaging.tile_starts(padded.shape[0], th, oh)
    xs = imaging.tile_starts(padded.shape[1], tw, ow)
    return TiledEdit(image, work, padded, model_hw, (oh, ow), [(y, x) for y in ys for x in xs], output)


class TileBlender:
    """Accumulates tile outputs with a blending window; `result()` is the whole image, encoded."""

    ROWS = 128  # rows of the working area converted at a time by `result`

    def __init__(self, plan: TiledEdit, *, fade: float = 0.0) -> None:
        self.plan, self.fade = plan, fade
        h, w = plan.padded.shape[:2]
        self._acc = np.zeros((3, h, w), np.float32)
        self._weight = np.zeros((h, w), np.float32)
        self._window = imaging.tile_weight(*plan.tile_hw, *plan.overlap)

    def add(self, origins: list[tuple[int, int]], outputs: np.ndarray) -> None:
        th, tw = self.plan.tile_hw
        for (y, x), out in zip(origins, outputs):
            self._acc[:, y:y + th, x:x + tw] += out * self._window
            self._weight[y:y + th, x:x + tw] += self._window

    def result(self) -> bytes:
        """The blended tiles; an image shrunk to its working resolution is resized back and gets the
        detail the shrinking removed put back (as `finish_masked_edit` does)."""
        image, work = self.plan.image, self.plan.work
        h, w = work.shape[:2]
        edited = np.empty((h, w, 3), np.uint8)
        for y in range(0, h, self.ROWS):  # in bands: a whole 16 MP image's float temporaries would be ~0.5 GB
            band = slice(y, min(y + self.ROWS, h))  # (the sums reach into the padding below the image)
            edited[band] = imaging.from_model_output(self._acc[:, band, :w] / self._weight[band, :w])
        if (h, w) != image.size:
            edited = imaging.add_detail(imaging.resize_rgb(edited, image.size), image.rgb,
                                        imaging.resize_rgb(work, image.size), fade=self.fade)
        return imaging.encode_image(edited, image.alpha, self.plan.output)


# ---- segment ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segmentation:
    size: tuple[int, int]
    inputs: Arrays


def plan_segment(image_bytes: bytes, model_hw: tuple[int, int], *, max_pixels: int) -> Segmentation:
    """The image shrunk to the model's input; a JPEG decodes at a reduced scale (never below twice the
    model's side), since only that shrunk copy is used: the answer is a mask at the image's full size."""
    rgb, size = imaging.decode_for_model(image_bytes, max_pixels=max_pixels, reduce_to=2 * max(model_hw))
    x = imaging.to_model_input(imaging.resize_rgb(rgb, model_hw))
    return Segmentation(size, {"image": x[None]})


#: what /eczema/segment answers: the mask, or the segmenter's probability of eczema per pixel
SEGMENT_OUTPUTS = ("mask", "probability")


def finish_segment(plan: Segmentation, logits: np.ndarray, output: str = "mask") -> bytes:
    """logits [1, mh, mw] -> PNG at the input's size: the mask (white where p > 0.5, see imaging.Logits) or
    the probability as grey levels round(255 p), nudged so that exactly the mask's pixels are >= 128."""
    resized = imaging.Logits(logits[0], plan.size)
    if output == "mask":
        return imaging.encode_mask_png(resized.positive())
    full = resized.values()
    positive = full >= imaging.LOGIT_THRESHOLD  # the mask answer's pixels, exactly
    grey = np.round(255.0 / (1.0 + np.exp(-np.clip(full, -30.0, 30.0)))).astype(np.uint8)
    grey[positive] = np.maximum(grey[positive], 128)
    grey[~positive] = np.minimum(grey[~positive], 127)
    return imaging.encode_mask_png(grey)


# ---- generate --------------------------------------------------------------------------------

#: The largest seed (2^53 - 1: every client's JSON numbers hold it exactly).
MAX_SEED = 2**53 - 1


def latents(seeds: list[int], z_dim: int) -> np.ndarray:
    """float32 [n, z_dim]: row i is N(0, 1) noise from numpy's default generator seeded with seeds[i]."""
    return np.stack([np.random.default_rng(s).standard_normal(z_dim, dtype=np.float32) for s in seeds])


def generate_inputs(seeds: list[int], z_dim: int, label: int | None) -> Arrays:
    inputs = {"z": latents(seeds, z_dim)}
    if label is not None:
        inputs["label"] = np.full((len(seeds),), label, dtype=np.int64)
    return inputs


def finish_generate(images: np.ndarray) -> list[bytes]:
    """image rows [n, 3, H, W] -> one PNG each."""
    return [imaging.encode_png(imaging.from_model_output(x)) for x in images]
