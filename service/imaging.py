"""Image maths of the service: numpy, Pillow (decoding, resizing) and imagecodecs (PNG writing); nothing of
HTTP or ONNX Runtime.

Decode (PNG, JPEG, WebP; EXIF orientation; alpha, palette, 16-bit, greyscale, CMYK), the model's
tensor conventions (`dermagan.manifest`: float32 [-1, 1] CHW), crops around a mask, resizing, the
feathered composite that leaves every pixel outside the dilated mask bit-identical, overlapping
tiles for mask-free edits of large images, and PNG encoding that carries no input metadata.

Arrays: RGB images are uint8 (H, W, 3); alpha uint8 (H, W); masks bool (H, W); boxes are
(top, left, bottom, right) with exclusive ends.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, NamedTuple

import imagecodecs
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from dermagan.colour import is_wide, source_profile, to_eight_bits, to_srgb
from dermagan.formats import HEIF
from dermagan.masks import mark
from dermagan.service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP") + (("HEIF",) if HEIF else ())
ACCEPTED_TEXT = "PNG, JPEG, WebP or HEIC" if HEIF else "PNG, JPEG or WebP"
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    alpha: np.ndarray | None  # (H, W) uint8, or None when the input had no alpha
    format: str  # "PNG" | "JPEG" | "WEBP"
    turned: bool = False  # EXIF orientation turned it by a quarter (its stored width and height swapped)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.rgb.shape[0], self.rgb.shape[1]


def _header(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """The image opened from its header (nothing decompressed yet), its size checked against `max_pixels`."""
    if not data:
        raise UnsupportedMediaType(f"{what} is empty; expected a {ACCEPTED_TEXT} image")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"{what} declares too many pixels ({e}); the limit is {max_pixels} "
                              "(DERMAGAN_MAX_PIXELS)") from e
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"{what}: expected a {ACCEPTED_TEXT} image, got {_sniff(data, what)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnsupportedMediaType(f"{what}: could not read the image header ({e})") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise UnsupportedMediaType(f"{what} has no pixels ({w}x{h})")
    if w * h > max_pixels:  # from the header: nothing is decompressed yet
        raise PayloadTooLarge(f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels "
                              "(DERMAGAN_MAX_PIXELS)")
    return img


def _load(img: Image.Image, what: str, reduce_to: int = 0) -> tuple[Image.Image, str, bool, tuple[int, int]]:
    """An image opened by `_header`, decoded by Pillow: (the image as shown, its format, whether EXIF
    orientation swapped its width and height, its (H, W) as shown at full scale).

    reduce_to > 0: a JPEG is decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or 1/8) as long as
    both sides stay >= reduce_to pixels -- for a model's input only, never for an image the answer is
    made of."""
    w, h = img.size
    try:
        if reduce_to and img.format == "JPEG":
            img.draft(img.mode, (reduce_to, reduce_to))
        img.load()
        # Honour EXIF orientation, in place: exif_transpose otherwise copies even an upright image (48 MB
        # more at 12 megapixels, beside the original); the format is read first, the transpose drops it.
        fmt, stored = img.format or "PNG", img.size
        ImageOps.exif_transpose(img, in_place=True)
        turned = img.size != stored
        return img, fmt, turned, ((w, h) if turned else (h, w))
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"{what}: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise UnsupportedMediaType(f"{what}: could not decode the {img.format} image ({e})") from e


#: EXIF orientation -> the numpy view of an (H, W, ...) array that shows it (what `ImageOps.exif_transpose`
#: does to a Pillow image: 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7
#: transverse, 8 quarter turn anticlockwise); 1 and unknown values leave it as it is.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a[::-1].swapaxes(0, 1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a[:, ::-1].swapaxes(0, 1),
}


def _fast_pixels(img: Image.Image, data: bytes) -> np.ndarray | None:
    """The common upload -- a whole 8-bit JPEG (YCbCr or grey) or PNG (RGB, RGBA or grey, no palette, no
    transparent colour), in sRGB (no profile, or an sRGB one) -- decoded by libjpeg-turbo or libpng through
    imagecodecs straight into a numpy array: the same pixels as Pillow's decoders (the same libraries;
    tests/service/test_imaging.py compares them), without Pillow's copy of them out through its raw
    encoder, and, for a PNG, libpng's faster unfiltering: uint8 (H, W, 1 | 3 | 4) as EXIF orients it. A
    12-megapixel photograph (bench/results/decode-2026-12-05-amd.md, AMD EPYC AVX2): JPEG 47 -> 32 ms, PNG
    257 -> 162 ms (one written with PNG's Paeth filter, as the service's answers are: 284 -> 178 ms).
    None for anything else, which Pillow decodes as before: CMYK, palette,
    16-bit, other profiles, animations, and a file that does not end with its format's end marker -- a
    truncated file, which libjpeg would fill with grey where Pillow refuses it, or one with data after
    the image."""
    if img.format == "JPEG":
        if img.mode not in ("RGB", "L") or not data.endswith(_JPEG_END):
            return None
        decode, error = imagecodecs.jpeg8_decode, imagecodecs.Jpeg8Error
    elif img.format == "PNG":
        if (img.mode not in ("RGB", "RGBA", "L") or "transparency" in img.info or getattr(img, "is_animated", False)
                or not data.endswith(_PNG_END)):
            return None
        decode, error = imagecodecs.png_decode, imagecodecs.PngError
    else:
        return None
    if source_profile(img) is not None or (img.format == "PNG" and _png_text_after_pixels(data)):
        return None
    try:
        pixels = decode(data)
    except error:
        return None  # Pillow's decoder names the problem
    h, w = img.height, img.width
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (h, w) or pixels.ndim not in (2, 3):
        return None
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels not in (1, 3, 4) or channels != len(img.getbands()):
        return None
    # Image.getexif: EXIF and XMP orientation from the header (PngImageFile's own would decode the image)
    turn = _ORIENT.get(Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1), lambda a: a)
    shown: np.ndarray = np.ascontiguousarray(turn(pixels.reshape(h, w, channels)))
    return shown


def _decode_fast(img: Image.Image, data: bytes) -> DecodedImage | None:
    """`_fast_pixels` as a DecodedImage (grey repeated into RGB), or None."""
    shown = _fast_pixels(img, data)
    if shown is None:
        return None
    channels = shown.shape[2]
    rgb = shown if channels == 3 else np.repeat(shown, 3, axis=2) if channels == 1 else np.ascontiguousarray(shown[..., :3])
    alpha = np.ascontiguousarray(shown[..., 3]) if channels == 4 else None
    return DecodedImage(rgb, alpha, img.format, turned=shown.shape[:2] != (img.height, img.width))


_JPEG_END, _PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"


def _png_text_after_pixels(data: bytes) -> bool:
    """Whether a PNG has EXIF or text chunks (where XMP orientation lives) after its first IDAT: Pillow reads
    those only when it decodes, so the header alone would not show that orientation."""
    pos, seen_pixels = 8, False
    while pos + 8 <= len(data):
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind in (b"eXIf", b"iTXt", b"tEXt", b"zTXt"):
            return True
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return False


class Header(NamedTuple):
    """What an image's header says, nothing decoded: its size as shown (EXIF orientation applied) and whether
    its pixels carry an alpha channel (which decoding keeps beside the RGB: `DecodedImage.alpha`)."""
    height: int
    width: int
    alpha: bool


def header(data: bytes | IO[bytes]) -> Header | None:
    """The image's `Header`, from its bytes or an open file (read only as far as the header: `dermagan edit`
    weighs a folder's photographs before it reads them); None when the header cannot be read (the decoder
    then refuses the image with the reason)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=ACCEPTED_FORMATS) as img:
            w, h = img.size
            try:  # (PngImageFile's own getexif would decode the image)
                turned = Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            except Exception:  # noqa: BLE001 - unreadable EXIF: the decoder ignores it too, or names the problem
                turned = False
            alpha = _has_alpha(img)
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image names the problem
        return None
    return Header(w, h, alpha) if turned else Header(h, w, alpha)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) from the image's header, as its EXIF orientation (where the header has it) shows it: nothing
    decoded; None when the header cannot be read (the decoder then refuses the image with the reason)."""
    head = header(data)
    return None if head is None else (head.height, head.width)


#: the leading bytes of formats an upload may be: a file that begins so but that Pillow cannot open is cut short or
#: corrupt before its header ends (such a PNG was named "unrecognised bytes b'\\x89PNG\\r\\n\\x1a\\n'"). Not Pillow's
#: own plugin checks (`Image.OPEN[fmt][1]`): its WebP check needs 16 bytes, so a shorter cut would stay unnamed.
_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
    (lambda d: d.startswith(b"\xff\xd8\xff"), "JPEG"),
    (lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", "WebP"),
    (lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"), "HEIC"),
    (lambda d: d[:6] in (b"GIF87a", b"GIF89a"), "GIF"),
)


def _sniff(data: bytes, what: str = "image") -> str:
    """Name what a refused upload looks like, for the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return f"a {img.format} image"
    except Exception:
        for looks_like, name in _SIGNATURES:
            if looks_like(data):
                return f"a {name} file cut short or corrupt before its header ends ({len(data)} bytes)"
        head = data[:16].lstrip()
        if head[:1] in (b"{", b"["):
            return "JSON"
        if head[:5].lower() in (b"<!doc", b"<html", b"<?xml", b"<svg "):
            return "markup (HTML/XML/SVG)"
        name = data.strip()
        if len(name) <= 256 and re.fullmatch(rb"[\w ./~:\\-]*\.[A-Za-z]\w{1,4}", name):  # a field filled with a file's name
            return (f"the text {name.decode('ascii', 'replace')!r}, a file's name: send the file itself (curl: "
                    f"-F {what.split()[0]}=@{name.decode('ascii', 'replace')}, with the @)")
        return f"unrecognised bytes {data[:8]!r}"


def decode_image(data: bytes, *, max_pixels: int, what: str = "image") -> DecodedImage:
    """Bytes of a PNG/JPEG/WebP/HEIC -> sRGB (+ alpha), oriented as EXIF says. Raises 413/415 errors."""
    img = _header(data, what, max_pixels)
    fast = _decode_fast(img, data)
    if fast is not None:
        return fast
    img, fmt, turned, _ = _load(img, what)
    return _rgb(to_srgb(img), fmt, turned)


def decode_for_model(data: bytes, *, max_pixels: int, reduce_to: int,
                     what: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    """(sRGB pixels to shrink to a model's input, the image's (H, W) as EXIF orients it).

    A JPEG is decoded at a reduced scale while both its sides stay >= `reduce_to` (see `_load`): a
    4000x3000 photograph for a 128 px model decodes at 500x375 in ~9 ms instead of ~90 ms at full size.
    Other formats decode whole (8-bit sRGB PNGs by libpng, as in `decode_image`). Errors as `decode_image`'s."""
    img = _header(data, what, max_pixels)
    if img.format != "JPEG":
        fast = _decode_fast(img, data)
        if fast is not None:
            return fast.rgb, fast.size
    img, fmt, turned, full_hw = _load(img, what, reduce_to)
    return _rgb(to_srgb(img), fmt, turned).rgb, full_hw


def _rgb(img: Image.Image, fmt: str, turned: bool = False) -> DecodedImage:
    """An opened, loaded image -> RGB (+ alpha)."""
    if is_wide(img):
        img = to_eight_bits(img)
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"))
        return DecodedImage(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), fmt, turned)
    # convert() copies even an image already in RGB: only convert what is not
    return DecodedImage(np.asarray(img if img.mode == "RGB" else img.convert("RGB")), None, fmt, turned)


def _has_alpha(img: Image.Image) -> bool:
    """Whether decoding `img` keeps an alpha channel: an alpha mode, or a transparent colour (tRNS)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _mismatch(size: tuple[int, int], shown: tuple[int, int], image_turned: bool) -> None:
    (h, w), (mh, mw) = size, shown
    turned = image_turned and (mw, mh) == size
    raise InvalidParameter(f"mask is {mw}x{mh} but the image is {w}x{h}; they must be the same size"
                           + ("; the image is shown turned by its EXIF orientation (as a photo viewer shows it): "
                              "draw the mask on the image as shown" if turned else ""))


def decode_mask(data: bytes, *, size: tuple[int, int], max_pixels: int, image_turned: bool = False) -> np.ndarray:
    """A mask image -> bool (H, W), read by dermagan.masks' rule, the training loaders' too: white on black
    (values above half the range; a pixel's value is its brightest channel), a label map (0/1: every value at
    most half, non-zero marks), or strokes on a transparent layer (where it is opaque).

    `size` is the image's (H, W); a mask of another size is a 422 (which says so when the mask has the
    image's stored size and `image_turned`: EXIF turned the image, so the mask was drawn on raw pixels).
    """
    img = _header(data, "mask", max_pixels)
    if img.size not in (size, size[::-1]):  # no orientation makes it fit: refused before a 16 MP mask is decoded
        _mismatch(size, (img.height, img.width), False)
    grey = _fast_pixels(img, data) if img.mode == "L" else None  # the usual mask, by libpng
    if grey is None:
        img, fmt, _, _ = _load(img, "mask")
    shown = grey.shape[:2] if grey is not None else (img.height, img.width)
    if shown != size:
        _mismatch(size, shown, image_turned)
    if grey is not None:
        return mark(grey[..., 0])
    if "transparency" not in img.info:
        if img.mode == "L":  # the usual mask (8-bit grey)
            return mark(np.asarray(img))
        if is_wide(img):  # 16-bit: at its own depth (a 16-bit 0/1 label map)
            return mark(np.clip(np.asarray(img), 0, 65535), half=32767)
    decoded = _rgb(img, fmt)  # decoded once: the same image, not the bytes again
    return mark(decoded.rgb.max(axis=2), decoded.alpha)


# ---- tensors ---------------------------------------------------------------------------------

def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return (rgb.astype(np.float32).transpose(2, 0, 1) / np.float32(127.5)) - np.float32(1.0)


def from_model_output(x: np.ndarray) -> np.ndarray:
    """float32 (3, H, W) in [-1, 1] -> uint8 (H, W, 3) (rounded, clipped)."""
    y = (np.clip(x, -1.0, 1.0) + 1.0) * 127.5
    out: np.ndarray = np.rint(y).astype(np.uint8).transpose(1, 2, 0).copy()
    return out


def mask_to_model_input(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> float32 (1, H, W) in {0, 1}."""
    return mask.astype(np.float32)[None]


# ---- geometry --------------------------------------------------------------------------------

#: Shrinking by more than twice this, Pillow first averages boxes of whole pixels (`Image.reduce`), then
#: resamples the rest of the way: "indistinguishable from fair resampling in most cases" at 3 (Pillow's
#: documentation). A 4000x3000 photograph to a 171x128 model input: 31 -> 10 ms, within 1 level of the
#: fair result (mean 0.15) (2026-12-05, AMD EPYC AVX2). Enlarging is unaffected.
REDUCING_GAP = 3.0


def resize_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear; see REDUCING_GAP for large reductions."""
    if rgb.shape[:2] == hw:
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").resize((hw[1], hw[0]), Image.Resampling.BILINEAR,
                                                         reducing_gap=REDUCING_GAP))


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((hw[1], hw[0]), Image.Resampling.NEAREST)
    return np.asarray(img) >= 128


#: Logits are resized as 128 + LOGIT_SCALE * logit (bilinear resizing is linear, so that is the same resize,
#: shifted and scaled). Pillow's float -> 8-bit conversion truncates and clips to 0..255, so the 8-bit copy is
#: >= 129 exactly where the logit is >= LOGIT_THRESHOLD (p > 0.5 + 2.4e-7): the mask, without copying the
#: float image out of Pillow (~65 ms for a 12 MP float image, against ~2 ms for its 8-bit copy).
LOGIT_SCALE = 2.0**20
LOGIT_THRESHOLD = 1.0 / LOGIT_SCALE


class Logits:
    """A logit map resized bilinearly to the input's size, held by Pillow as 128 + LOGIT_SCALE * logit."""

    def __init__(self, x: np.ndarray, hw: tuple[int, int]) -> None:
        shifted = Image.fromarray((x.astype(np.float64) * LOGIT_SCALE + 128.0).astype(np.float32), "F")
        self._image = shifted if x.shape == hw else shifted.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)

    def positive(self) -> np.ndarray:
        """bool (h, w): where the logit is >= LOGIT_THRESHOLD."""
        return np.asarray(self._image.convert("L")) >= 129

    def values(self) -> np.ndarray:
        """float32 (h, w): the logits (to within ~4e-6 for logits up to 40 in size). `values() >=
        LOGIT_THRESHOLD` is exactly `positive()`: v - 128 is exact near 128 and the scale a power of 2."""
        logits = np.subtract(np.asarray(self._image), np.float32(128.0), dtype=np.float32)
        logits *= np.float32(LOGIT_THRESHOLD)
        return logits


def mask_bbox(mask: np.ndarray) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def grow_box(box: Box, px: int, hw: tuple[int, int]) -> Box:
    """`box` grown by `px` on every side, inside (H, W)."""
    t, l, b, r = box
    return max(t - px, 0), max(l - px, 0), min(b + px, hw[0]), min(r + px, hw[1])


def context_box(bbox: Box, image_hw: tuple[int, int], model_hw: tuple[int, int], *,
                grow_px: int, context: float) -> Box:
    """The crop fed to the model: `bbox` grown by `grow_px`, plus `context` x its side, widened to
    the model's aspect ratio, at least the model's resolution where the image allows, inside the image."""
    H, W = image_hw
    mh, mw = model_hw
    t, l, b, r = bbox
    bh = (b - t) + 2 * grow_px
    bw = (r - l) + 2 * grow_px
    bh = math.ceil(bh * (1 + context))
    bw = math.ceil(bw * (1 + context))
    if bh * mw < bw * mh:  # too flat for the model: grow the height
        bh = math.ceil(bw * mh / mw)
    else:
        bw = math.ceil(bh * mw / mh)
    bh, bw = min(max(bh, mh), H), min(max(bw, mw), W)
    cy, cx = (t + b) / 2, (l + r) / 2
    top = min(max(int(round(cy - bh / 2)), 0), H - bh)
    left = min(max(int(round(cx - bw / 2)), 0), W - bw)
    return top, left, top + bh, left + bw


def _box_sum(x: np.ndarray, r: int, axis: int, dtype: type | None = None) -> np.ndarray:
    """Sum over a window of 2r+1 along `axis` (zero outside), via a cumulative sum: O(n) for any r.

    out[i] = c[min(i + r, n - 1)] - c[i - r - 1] (0 where i - r - 1 < 0), c the cumulative sum; written
    with slices of one array (no padding copies, no index arrays): it runs on every masked request.
    `dtype` is the cumulative sum's; an unsigned one may wrap around, and the differences are still
    exact as long as every window's sum fits in it (modular arithmetic) -- np.uint16 for counts of a
    boolean mask moves a quarter of the bytes of numpy's default int64.
    """
    c = np.cumsum(x, axis=axis, dtype=dtype)
    n = c.shape[axis]
    out = np.empty_like(c)
    if r < n:
        out[_along(axis, None, n - r)] = c[_along(axis, r, None)]
    out[_along(axis, max(n - r, 0), None)] = c[_along(axis, n - 1, n)]
    if r + 1 < n:
        out[_along(axis, r + 1, None)] -= c[_along(axis, None, n - r - 1)]
    return out


def _along(axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    """The index of rows start:stop along `axis` (0 or 1) of a 2-D array: a tuple of slices, which numpy
    takes faster than np.moveaxis's views (~10 µs each; these run a dozen times on every masked request)."""
    return (slice(start, stop),) if axis == 0 else (slice(None), slice(start, stop))


def _dilate_axis(mask: np.ndarray, r: int, axis: int) -> np.ndarray:
    """OR of `mask` shifted by -r..r along `axis`, in O(log r) passes: a set that already reaches d
    pixels each way reaches d + s after OR-ing itself shifted by +-s, for any s <= d + 1 (d + 1, not
    2d + 1, keeps the runs cut off by the image's border contiguous)."""
    out = mask.copy()
    reach = 0
    while reach < r:
        s = min(reach + 1, r - reach)
        prev = out.copy()
        out[_along(axis, s, None)] |= prev[_along(axis, None, -s)]
        out[_along(axis, None, -s)] |= prev[_along(axis, s, None)]
        reach += s
    return out


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by `r` pixels (Chebyshev distance <= r) of a bool mask. Boolean shifts: a
    12-megapixel mask at r = 4 in 0.03 s, where box sums of int64 took 0.30 s (2026-12-04)."""
    if r <= 0:
        return mask.copy()
    return _dilate_axis(_dilate_axis(mask.astype(bool, copy=False), r, 0), r, 1)


def feather_alpha(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """float32 (H, W): 1 on the mask, falling smoothly to exactly 0 at `dilate_px` from it."""
    if dilate_px <= 1:
        return dilate(mask, dilate_px).astype(np.float32)
    half = dilate_px // 2
    rest = dilate_px - half
    inner = dilate(mask, half)
    k = 2 * rest + 1
    dtype = np.uint16 if k * k < 1 << 16 else np.uint32  # every window's count fits
    counts = _box_sum(_box_sum(inner, rest, 0, dtype), rest, 1, dtype)  # support: within dilate_px of mask
    alpha = (np.arange(k * k + 1) / (k * k)).astype(np.float32)[counts]  # count / k^2, looked up
    alpha[mask] = 1.0
    return alpha


def composite(original: np.ndarray, edited: np.ndarray, alpha: np.ndarray, *, rows: int = 64) -> np.ndarray:
    """alpha * edited + (1 - alpha) * original, uint8; exactly `original` wherever alpha == 0 (0 * e +
    1 * o is o in floating point) and exactly `edited` wherever it is 1. In bands of `rows` rows, so
    the float temporaries stay small (a 12-megapixel window: 0.25 s, 0.42 s whole)."""
    out = np.empty_like(original)
    for y in range(0, original.shape[0], rows):
        a = alpha[y:y + rows, :, None]
        mixed = a * edited[y:y + rows].astype(np.float32) + (1.0 - a) * original[y:y + rows].astype(np.float32)
        out[y:y + rows] = np.clip(np.rint(mixed), 0, 255)
    return out


def add_detail(edited: np.ndarray, original: np.ndarray, blurred: np.ndarray, *, fade: float = 0.0,
               rows: int = 128) -> np.ndarray:
    """uint8 edited + (original - blurred), clipped: the detail `blurred` lost from `original`, put back
    on `edited` (all three (H, W, 3) uint8, `edited` and `blurred` at the same, coarser scale).

    fade > 0: the detail is put back only where the edit changed little -- in full where edited ==
    blurred, fading linearly to none where a channel changed by `fade` or more (the texture of what
    was removed goes with it). Works in bands of `rows` rows, so a 16-megapixel image needs a few MB
    of temporaries, not hundreds."""
    out = np.empty_like(edited)
    for y in range(0, edited.shape[0], rows):
        e, b = edited[y:y + rows].astype(np.int16), blurred[y:y + rows].astype(np.int16)
        detail = original[y:y + rows].astype(np.int16) - b
        if fade > 0:
            d = np.abs(e - b)
            change = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])[..., None]  # = .max(axis=-1), ~25x faster
            keep = np.clip(1.0 - change / np.float32(fade), 0.0, 1.0)
            detail = np.rint(detail * keep).astype(np.int16)
        out[y:y + rows] = np.clip(e + detail, 0, 255)
    return out


# ---- tiles (mask-free edits of any size) -----------------------------------------------------

def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` covering [0, n) with at least `overlap` shared pixels."""
    if n <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return starts


def tile_weight(th: int, tw: int, overlap_h: int, overlap_w: int) -> np.ndarray:
    """float32 (th, tw) blending window: linear ramps over the overlap, never zero."""
    def ramp(n: int, ov: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32) + 0.5
        if ov <= 0:
            return np.ones(n, np.float32)
        r: np.ndarray = np.minimum(1.0, np.minimum(i, n - i) / ov).astype(np.float32)
        return r
    return np.outer(ramp(th, overlap_h), ramp(tw, overlap_w))


def pad_to(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Pad (edge) up to at least `hw`."""
    ph, pw = max(hw[0] - rgb.shape[0], 0), max(hw[1] - rgb.shape[1], 0)
    if ph == 0 and pw == 0:
        return rgb
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")


# ---- output ----------------------------------------------------------------------------------

#: PNGs are written by libpng through imagecodecs, not by Pillow: Pillow chooses a row filter by trying
#: each of PNG's filters on every row, which costs more than the compression itself (a 128 px photograph:
#: ~0.8 of Pillow's ~1.2 ms even at compress_level 0). Here one filter serves every row -- Paeth for
#: images and grey levels, none for two-level masks (long runs of one value) -- with zlib's run-length
#: strategy (Z_RLE, "almost as fast as Huffman-only, but better compression for PNG image data": after
#: the filter, longer matches are rare in skin photographs). Against Pillow at compress_level 1 with Z_RLE
#: (2026-12-04, AMD EPYC AVX2, Pillow 13.0 with zlib-ng, imagecodecs 2026.3.6; medians, one run):
#: procedural eczema / hand / lesion photographs at 128 px 0.81-1.37 -> 0.42-0.51 ms, the same size
#: (14-26 KiB); the benchmarks' gradient 0.74 -> 0.45 ms (8 KiB); 512 px 12.3 -> 4.6 ms (112-113 KiB);
#: 4000x3000 849 -> 370 ms (8.6 MB); masks at 512 px 1.14 -> 0.33 ms (2.8 -> 1.1 KiB), at 4000x3000 45 ->
#: 16 ms (69 -> 17 KiB); a 512 px probability map 5.2 -> 2.7 ms (115 -> 119 KiB). libpng releases the
#: GIL while it encodes (two 2000x1500 images in two threads: 117 ms; one alone: 107 ms). It writes
#: IHDR, IDAT and IEND only: no metadata.
_PNG_IMAGE = {"filter": imagecodecs.PNG.FILTER.PAETH, "strategy": imagecodecs.PNG.STRATEGY.RLE}
_PNG_MASK = {"filter": imagecodecs.PNG.FILTER.NONE, "strategy": imagecodecs.PNG.STRATEGY.RLE}


def encode_png(rgb: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """PNG bytes with no metadata at all (no EXIF, ICC, text chunks); uint8 RGB (H, W, 3), with alpha
    (H, W) as RGBA; zlib level 1 (see `_PNG_IMAGE`)."""
    pixels = np.dstack([rgb, alpha]) if alpha is not None else np.ascontiguousarray(rgb)
    return imagecodecs.png_encode(pixels, level=1, **_PNG_IMAGE)


@dataclass(frozen=True)
class OutputFormat:
    """How an edit's result is encoded: "png" (lossless, the default), "jpeg" or "webp" (lossy, at
    `quality` 1-100). A mask-free edit of a 4000x3000 photograph over HTTP (bench/bench_formats.py,
    2026-12-04, with libpng writing the PNG): PNG 0.87 s and 14.2 MB, JPEG q90 0.58 s and 2.2 MB (48 dB
    from the PNG), WebP q90 0.81 s and 1.0 MB (42 dB)."""

    kind: str = "png"
    quality: int = 90

    MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
    #: the longest side each lossy format can hold: libjpeg's JPEG_MAX_DIMENSION (65500, not the format's
    #: 65535) and WebP's 14-bit sizes; PNG's (2^31 - 1) is past any image DERMAGAN_MAX_PIXELS lets in
    MAX_SIDE = {"jpeg": 65500, "webp": 16383}

    @property
    def media_type(self) -> str:
        return self.MEDIA_TYPES[self.kind]


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None, fmt: OutputFormat) -> bytes:
    """rgb (+ alpha) in `fmt`, with no metadata. JPEG keeps the colour at full resolution (4:4:4, not
    4:2:0: eczema is a colour) and has no alpha -- the edit plans refuse that pair before a model runs;
    WebP uses libwebp's fastest method (0; method 4 took 3x as long for a 4 % smaller file)."""
    if fmt.kind == "png":
        return encode_png(rgb, alpha)
    if alpha is not None and fmt.kind == "jpeg":
        raise ValueError("JPEG has no alpha channel")
    img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA") if alpha is not None else Image.fromarray(rgb, "RGB")
    buf = io.BytesIO()
    if fmt.kind == "jpeg":
        img.save(buf, format="JPEG", quality=fmt.quality, subsampling=0)
    else:
        img.save(buf, format="WEBP", quality=fmt.quality, method=0)
    return buf.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """bool (H, W) -> greyscale PNG, 255 where True; uint8 (H, W) -> greyscale PNG of those values."""
    if mask.dtype == np.uint8:  # grey levels (a probability): smooth, like an image
        return imagecodecs.png_encode(np.ascontiguousarray(mask), level=1, **_PNG_IMAGE)
    return imagecodecs.png_encode(np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255), level=1, **_PNG_MASK)
