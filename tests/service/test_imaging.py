"""service/imaging.py with tiny arrays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps
from sample_images import (display_p3_icc, encode, exif_bytes, gradient, png_chunk, png_chunk_types, png_declaring, png_raw,
                           png_with_metadata, rect_mask)

from dermagan.service import imaging
from dermagan.service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType

MP = 10**6


def test_decode_formats_and_modes() -> None:
    rgb = gradient(6, 9)
    for fmt, kw in (("PNG", {}), ("WEBP", {"lossless": True})):
        d = imaging.decode_image(encode(rgb, fmt, **kw), max_pixels=MP)
        assert d.format == fmt and d.alpha is None and np.array_equal(d.rgb, rgb)
    grey = imaging.decode_image(encode(rgb, mode="L"), max_pixels=MP).rgb
    assert grey.shape == (6, 9, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert imaging.decode_image(encode(rgb, mode="1"), max_pixels=MP).rgb.shape == (6, 9, 3)
    rgba = np.dstack([rgb, np.arange(54, dtype=np.uint8).reshape(6, 9)])
    d = imaging.decode_image(encode(rgba), max_pixels=MP)
    assert np.array_equal(d.rgb, rgb) and np.array_equal(d.alpha, rgba[..., 3])
    assert imaging.decode_image(encode(rgba, mode="LA"), max_pixels=MP).alpha is not None


def test_decode_palette_with_transparency() -> None:
    img = Image.new("P", (4, 3))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    d = imaging.decode_image(buf.getvalue(), max_pixels=MP)
    assert d.alpha is not None and d.alpha[1, 1] == 255 and d.alpha[0, 0] == 0
    assert tuple(d.rgb[1, 1]) == (0, 255, 0)


def test_decode_sixteen_bit_scales_instead_of_clipping() -> None:
    arr = np.array([[0, 256, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    d = imaging.decode_image(buf.getvalue(), max_pixels=MP)
    assert d.rgb[0, :, 0].tolist() == [0, 1, 255]


def test_decode_cmyk_jpeg() -> None:
    d = imaging.decode_image(encode(gradient(8, 8), "JPEG", mode="CMYK"), max_pixels=MP)
    assert d.rgb.shape == (8, 8, 3) and d.format == "JPEG"


def test_exif_orientation_is_applied() -> None:
    stored = gradient(4, 6)
    jpeg = encode(stored, "JPEG", quality=100, exif=exif_bytes(6))
    d = imaging.decode_image(jpeg, max_pixels=MP)
    assert d.rgb.shape == (6, 4, 3)
    ref = np.rot90(imaging.decode_image(encode(stored, "JPEG", quality=100), max_pixels=MP).rgb, k=-1)
    assert np.abs(d.rgb.astype(int) - ref.astype(int)).max() <= 8


def _pillow_decoded(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """RGB and alpha as Pillow alone decodes the image, turned as its EXIF says (the fast decoders' reference)."""
    rgba = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA"))
    return rgba[..., :3], rgba[..., 3]


_RGB = gradient(37, 53)
_XMP_TURNED = png_chunk(b"iTXt", b'XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
_FAST = {
    "jpeg 4:4:4": encode(_RGB, "JPEG", subsampling=0),
    "jpeg 4:2:0": encode(_RGB, "JPEG", subsampling=2, quality=70),
    "jpeg 4:2:2 progressive": encode(_RGB, "JPEG", subsampling=1, progressive=True),
    "jpeg restart markers": encode(_RGB, "JPEG", restart_marker_rows=1),
    "jpeg grey": encode(_RGB, "JPEG", mode="L"),
    "jpeg with an sRGB profile": encode(_RGB, "JPEG", icc_profile=_SRGB),
    **{f"jpeg orientation {o}": encode(_RGB, "JPEG", exif=exif_bytes(o)) for o in range(1, 9)},
    "png rgb": encode(_RGB),
    "png rgb as the service writes it": imaging.encode_png(_RGB),
    "png rgba": encode(np.dstack([_RGB, _RGB[..., 1]])),
    "png grey": encode(_RGB, mode="L"),
    "png grey 2-bit": png_raw(_RGB[..., :1] >> 6, 2, 0),
    "png grey 4-bit": png_raw(_RGB[..., :1] >> 4, 4, 0),
    "png orientation 6": encode(_RGB, exif=exif_bytes(6)),
    "png xmp orientation before the pixels": png_raw(_RGB, 8, 2, before=_XMP_TURNED),
}
_PILLOW = {
    "jpeg cmyk": encode(_RGB, "JPEG", mode="CMYK"),
    "jpeg display p3": encode(_RGB, "JPEG", icc_profile=display_p3_icc()),
    "jpeg with bytes after the image": encode(_RGB, "JPEG") + b"\x00\x00",
    "png palette": encode(_RGB, mode="P"),
    "png grey + alpha": encode(np.dstack([_RGB, _RGB[..., 1]]), mode="LA"),
    "png 1-bit": encode(_RGB, mode="1"),
    "png grey 16-bit": png_raw(_RGB[..., :1].astype(np.uint16) * 257, 16, 0),
    "png rgb 16-bit": png_raw(_RGB.astype(np.uint16) * 257, 16, 2),
    "png transparent colour": encode(_RGB, transparency=(0, 0, 0)),
    "png display p3": encode(_RGB, icc_profile=display_p3_icc()),
    "png exif after the pixels": png_raw(_RGB, 8, 2, after=png_chunk(b"eXIf", exif_bytes(6)[6:])),
    "png xmp orientation after the pixels": png_raw(_RGB, 8, 2, after=_XMP_TURNED),
    "png with bytes after the image": encode(_RGB) + b"\x00",
}


@pytest.mark.parametrize("name", sorted(_FAST) + sorted(_PILLOW))
def test_fast_decoders_give_pillows_pixels_and_leave_the_rest_to_pillow(name: str) -> None:
    """8-bit JPEG and PNG in sRGB are decoded by libjpeg-turbo / libpng through imagecodecs (imaging._decode_fast):
    the same pixels, alpha and orientation as Pillow's decoders; every other kind is left to Pillow."""
    data = _FAST.get(name) or _PILLOW[name]
    fast = imaging._decode_fast(imaging._header(data, "image", MP), data)
    assert (fast is not None) == (name in _FAST)
    got = imaging.decode_image(data, max_pixels=MP)
    assert got.rgb.dtype == np.uint8 and got.rgb.flags.c_contiguous and got.rgb.shape[2] == 3
    if name in _FAST:
        assert fast is not None and np.array_equal(fast.rgb, got.rgb) and fast.turned == got.turned
        rgb, alpha = _pillow_decoded(data)
        assert np.array_equal(got.rgb, rgb)
        assert (got.alpha is not None) == (name == "png rgba") and (got.alpha is None or np.array_equal(got.alpha, alpha))
    turned = any(f"orientation {o}" in name for o in (5, 6, 7, 8)) or "xmp orientation" in name or "exif after" in name
    assert got.turned == turned and got.size == ((53, 37) if turned else (37, 53))


def test_grey_png_masks_and_pngs_for_a_model_take_the_fast_decoder_too() -> None:
    """decode_mask reads an 8-bit grey PNG with libpng (turned by its EXIF as Pillow would); decode_for_model
    decodes a PNG (which has no reduced-scale decoding) as decode_image does."""
    grey = gradient(37, 53)[..., 0]
    data = encode(grey)
    assert imaging._fast_pixels(imaging._header(data, "mask", MP), data) is not None
    assert np.array_equal(imaging.decode_mask(data, size=(37, 53), max_pixels=MP), grey >= 128)
    turned = encode(grey, exif=exif_bytes(6))
    assert np.array_equal(imaging.decode_mask(turned, size=(53, 37), max_pixels=MP), np.rot90(grey, k=-1) >= 128)
    with pytest.raises(InvalidParameter, match="mask is 53x37 but the image is 37x53"):
        imaging.decode_mask(data, size=(53, 37), max_pixels=MP)
    for image in (encode(_RGB), encode(_RGB, exif=exif_bytes(8))):
        rgb, size = imaging.decode_for_model(image, max_pixels=MP, reduce_to=16)
        whole = imaging.decode_image(image, max_pixels=MP)
        assert np.array_equal(rgb, whole.rgb) and size == whole.size


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_file_is_refused_not_filled_in(fmt: str) -> None:
    """libjpeg fills a truncated JPEG with grey and says so only in a warning: such a file never takes the
    fast decoder (it does not end with the end-of-image marker), and Pillow refuses it."""
    data = encode(gradient(64, 64) ^ np.uint8(0x5A), fmt)
    with pytest.raises(UnsupportedMediaType, match="truncated"):
        imaging.decode_image(data[: len(data) * 2 // 3], max_pixels=MP)


@pytest.mark.parametrize("data,error,words", [
    (b"", UnsupportedMediaType, "empty"),
    (b"GIF89a....", UnsupportedMediaType, "PNG, JPEG, WebP or HEIC"),
    (encode(gradient(4, 4), "GIF"), UnsupportedMediaType, "GIF"),
    (encode(gradient(4, 4), "BMP"), UnsupportedMediaType, "BMP"),
    (b'{"a": 1}', UnsupportedMediaType, "JSON"),
    (encode(gradient(64, 64))[:80], UnsupportedMediaType, "image"),
    # a known signature that Pillow cannot open: named as that format cut short, not as "unrecognised bytes"
    (encode(gradient(64, 64))[:12], UnsupportedMediaType, r"got a PNG file cut short or corrupt before its header ends \(12 bytes\)$"),
    (encode(gradient(64, 64), "JPEG")[:20], UnsupportedMediaType, r"got a JPEG file cut short .* \(20 bytes\)$"),
    (encode(gradient(64, 64), "WEBP")[:14], UnsupportedMediaType, r"got a WebP file cut short .* \(14 bytes\)$"),
    (b"\x00\x01abc", UnsupportedMediaType, r"got unrecognised bytes b'\\x00\\x01abc'$"),
    (png_declaring(2000, 1000), PayloadTooLarge, "limit"),
    (png_declaring(100_000, 100_000), PayloadTooLarge, "pixels"),
])
def test_decode_refuses(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        imaging.decode_image(data, max_pixels=MP)


def test_decode_mask_threshold_and_size() -> None:
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    m = imaging.decode_mask(encode(grey), size=(1, 4), max_pixels=MP)
    assert m.tolist() == [[False, False, True, True]]
    with pytest.raises(InvalidParameter, match="mask is 4x1 but the image is 1x4"):
        imaging.decode_mask(encode(grey), size=(4, 1), max_pixels=MP)


def test_a_mask_no_orientation_fits_is_refused_from_its_header(monkeypatch) -> None:
    """A 10x10 image with a 4000x4000 mask: the 422 before the mask's 16 MP are decoded."""
    big = encode(np.zeros((4000, 4000), np.uint8), mode="L")
    monkeypatch.setattr(imaging, "_fast_pixels", lambda *a: pytest.fail("decoded"))
    monkeypatch.setattr(imaging, "_load", lambda *a: pytest.fail("decoded"))
    with pytest.raises(InvalidParameter, match="mask is 4000x4000 but the image is 10x10; they must be the same size"):
        imaging.decode_mask(big, size=(10, 10), max_pixels=1 << 26)


def test_decode_mask_reads_grey_as_the_rgb_path_does() -> None:
    """8-bit grey masks skip the RGB conversion; every mode must threshold the same grey."""
    grey = np.random.default_rng(3).integers(0, 256, (7, 11), dtype=np.uint8)
    want = grey >= 128
    for data in (encode(grey, mode="L"), encode(np.dstack([grey] * 3)), encode(np.dstack([grey, np.full_like(grey, 255)]), mode="LA")):
        assert np.array_equal(imaging.decode_mask(data, size=(7, 11), max_pixels=MP), want)
    transparent = Image.fromarray(grey, "L")
    buf = io.BytesIO()
    transparent.save(buf, format="PNG", transparency=int(grey[0, 0]))  # tRNS: that grey is transparent
    assert not imaging.decode_mask(buf.getvalue(), size=(7, 11), max_pixels=MP)[grey == grey[0, 0]].any()


@pytest.mark.parametrize("model_hw,dilate_px,context", [((64, 64), 8, 0.25), ((48, 64), 3, 1.0), ((64, 64), 0, 0.0),
                                                        ((32, 32), 16, 0.25)])
def test_finish_masked_edit_equals_compositing_the_whole_crop(model_hw, dilate_px, context) -> None:
    """Only the window within `dilate_px` of the mask is composited; it must give the same image as the
    whole crop (resized or not), including masks at the image's border."""
    from dermagan.service import pipeline

    rng = np.random.default_rng(dilate_px)
    for h, w, rects in ((90, 120, [(30, 40, 50, 70)]), (64, 64, [(0, 0, 5, 64), (60, 2, 64, 9)]),
                        (200, 150, [(10, 10, 12, 12), (150, 100, 190, 140)])):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), bool)
        for rect in rects:
            mask |= rect_mask(h, w, rect)
        plan = pipeline.plan_masked_edit(encode(image), encode(mask.astype(np.uint8) * 255, mode="L"), model_hw,
                                         max_pixels=MP, dilate_px=dilate_px, context=context)
        out = np.tanh(rng.standard_normal((3, *model_hw)).astype(np.float32))
        t, l, b, r = plan.box
        want = image.copy()
        edited = imaging.resize_rgb(imaging.from_model_output(out), (b - t, r - l))
        if (b - t, r - l) != model_hw:  # the detail the shrinking removed is put back
            edited = imaging.add_detail(edited, image[t:b, l:r], imaging.resize_rgb(plan.crop, (b - t, r - l)))
        want[t:b, l:r] = imaging.composite(image[t:b, l:r], edited, imaging.feather_alpha(mask[t:b, l:r], dilate_px))
        got = imaging.decode_image(pipeline.finish_masked_edit(plan, out, dilate_px=dilate_px), max_pixels=MP).rgb
        assert np.array_equal(got, want)


def test_a_box_shrunk_to_the_model_gets_its_detail_back() -> None:
    """A box larger than the model is edited at the model's scale, and the image's own detail comes
    back: a model that changes nothing changes no pixel, a model that brightens by 30 brightens the
    photograph itself (its texture intact) by 30 inside the mask."""
    from dermagan.service import pipeline

    rng = np.random.default_rng(0)
    h, w = 300, 420  # the box (mask + context) is resized to 32 x 32 and back
    image = (rng.integers(40, 201, (h, w, 3))).astype(np.uint8)  # fine texture: lost in 32 x 32
    mask = rect_mask(h, w, (100, 150, 220, 290))
    plan = pipeline.plan_masked_edit(encode(image), encode(mask.astype(np.uint8) * 255, mode="L"), (32, 32),
                                     max_pixels=MP, dilate_px=8, context=0.25)
    t, l, b, r = plan.box
    assert (b - t) > 32 and np.array_equal(plan.crop, imaging.resize_rgb(image[t:b, l:r], (32, 32)))
    same = pipeline.finish_masked_edit(plan, imaging.to_model_input(plan.crop), dilate_px=8)
    assert np.array_equal(imaging.decode_image(same, max_pixels=MP).rgb, image)
    brighter = pipeline.finish_masked_edit(plan, imaging.to_model_input(plan.crop + np.uint8(30)), dilate_px=8)
    got = imaging.decode_image(brighter, max_pixels=MP).rgb
    assert np.array_equal(got[mask], image[mask] + 30)
    near = imaging.dilate(mask, 8)
    assert np.array_equal(got[~near], image[~near])


def test_add_detail_clips_and_fades_where_the_edit_changed_much() -> None:
    edited = np.array([[[250, 5, 100]]], np.uint8)
    original = np.array([[[200, 0, 60]]], np.uint8)
    blurred = np.array([[[180, 20, 60]]], np.uint8)
    assert imaging.add_detail(edited, original, blurred).tolist() == [[[255, 0, 100]]]
    blurred = np.full((1, 3, 3), 100, np.uint8)
    original = blurred + np.uint8(10)  # detail +10 everywhere
    edited = np.array([[[100, 100, 100], [100, 106, 100], [100, 100, 140]]], np.uint8)  # changed by 0, 6, 40
    got = imaging.add_detail(edited, original, blurred, fade=12)
    assert got[..., 0].tolist() == [[110, 105, 100]]  # all of the detail, half, none
    rng = np.random.default_rng(2)
    e, o, b = (rng.integers(0, 256, (7, 5, 3), dtype=np.uint8) for _ in range(3))
    for fade in (0.0, 30.0):  # bands of 2 rows give the same image as one band
        assert np.array_equal(imaging.add_detail(e, o, b, fade=fade, rows=2), imaging.add_detail(e, o, b, fade=fade))


def test_mask_free_edits_shrink_to_work_px_and_a_no_op_model_changes_nothing() -> None:
    from dermagan.service import pipeline

    assert pipeline.work_size((600, 800), 64) == (64, 85)
    assert pipeline.work_size((800, 600), 64) == (85, 64)
    assert pipeline.work_size((50, 70), 64) == (50, 70)  # never enlarged
    image = np.random.default_rng(1).integers(0, 256, (150, 211, 3), dtype=np.uint8)
    for work_px, fade in ((64, 0.0), (64, 12.0), (100, 12.0), (150, 0.0)):
        plan = pipeline.plan_tiled_edit(encode(image), (32, 32), max_pixels=MP, overlap=0.25, work_px=work_px)
        assert plan.work.shape[:2] == pipeline.work_size((150, 211), work_px)
        blender = pipeline.TileBlender(plan, fade=fade)
        for origins, rows in plan.chunks(5):
            blender.add(origins, rows["image"])  # the identity
        assert np.array_equal(imaging.decode_image(blender.result(), max_pixels=MP).rgb, image)


def test_mask_free_results_are_the_same_in_bands() -> None:
    """TileBlender.result converts the blended sums in bands of rows (a 16 MP image's float temporaries
    would be ~0.5 GB at once): any band height gives the same bytes."""
    from dermagan.service import pipeline

    full = np.random.default_rng(2).integers(0, 256, (150, 211, 3), dtype=np.uint8)
    for image, work_px in ((full, 64), (full, 150), (full[:5, :7], 32)):  # the last padded to a tile
        plan = pipeline.plan_tiled_edit(encode(image), (32, 32), max_pixels=MP, overlap=0.25, work_px=work_px)
        answers = set()
        for rows in (1, 7, 128, 1000):
            blender = pipeline.TileBlender(plan, fade=12.0)
            blender.ROWS = rows
            for origins, batch in plan.chunks(5):
                blender.add(origins, np.tanh(batch["image"] * 1.7))  # a model that changes every pixel
            answers.add(blender.result())
        assert len(answers) == 1, work_px


def test_model_tensors_round_trip() -> None:
    rgb = gradient(5, 7)
    x = imaging.to_model_input(rgb)
    assert x.shape == (3, 5, 7) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(imaging.from_model_output(x), rgb)
    assert imaging.from_model_output(np.full((3, 1, 1), 5.0, np.float32)).tolist() == [[[255, 255, 255]]]


def test_dilate_is_square_and_exact() -> None:
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = imaging.dilate(m, 2)
    assert d.sum() == 25 and d[2:7, 2:7].all()
    assert np.array_equal(imaging.dilate(m, 0), m)


@pytest.mark.parametrize("shape,r", [((9, 13), 2), ((5, 7), 6), ((1, 4), 3), ((40, 40), 0), ((33, 21), 20)])
def test_box_sum_matches_the_definition(shape, r) -> None:
    x = np.random.default_rng(r).integers(0, 5, shape)
    for axis in (0, 1):
        moved = np.moveaxis(x, axis, 0)
        want = np.stack([moved[max(i - r, 0): i + r + 1].sum(0) for i in range(moved.shape[0])])
        assert np.array_equal(imaging._box_sum(x, r, axis), np.moveaxis(want, 0, axis))


def test_dilate_and_feather_equal_their_definitions_at_the_border_and_any_radius() -> None:
    """The boolean-shift dilation against a brute-force square dilation, and the feather against box means
    of it in float64 (what they were computed as before 2026-12-04), including radii whose window count
    passes 2^16 (uint32 box sums) and masks touching the image's border."""
    rng = np.random.default_rng(5)
    for shape, density in (((57, 91), 0.97), ((30, 300), 0.995), ((1, 40), 0.9)):
        m = rng.random(shape) > density
        m[0, 0] = True
        for r in (0, 1, 2, 3, 4, 7, 8, 20, 200):
            brute = np.zeros_like(m)
            for y, x in np.argwhere(m):
                brute[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = True
            assert np.array_equal(imaging.dilate(m, r), brute), (shape, r)
            if r >= 2:
                half, rest = r // 2, r - r // 2
                inner = imaging.dilate(m, half).astype(np.float64)
                want = (imaging._box_sum(imaging._box_sum(inner, rest, 0), rest, 1) / (2 * rest + 1) ** 2).astype(np.float32)
                want[m] = 1.0
                assert np.array_equal(imaging.feather_alpha(m, r), want), (shape, r)


def test_box_sum_in_a_wrapping_dtype_is_exact() -> None:
    x = np.ones((3, 70000), bool)  # the cumulative sum passes 2^16 and wraps around
    assert (imaging._box_sum(x, 10, 1, np.uint16)[:, 10:-10] == 21).all()


def test_feather_alpha_support_and_core() -> None:
    m = rect_mask(40, 40, (15, 15, 25, 25))
    a = imaging.feather_alpha(m, 8)
    assert (a[m] == 1).all()
    assert (a[~imaging.dilate(m, 8)] == 0).all()
    assert ((a > 0) & (a < 1)).any() and a.min() >= 0 and a.max() <= 1


def test_composite_is_bit_identical_where_alpha_is_zero() -> None:
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    edit = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = imaging.feather_alpha(rect_mask(20, 30, (5, 5, 10, 12)), 4)
    out = imaging.composite(orig, edit, alpha, rows=7)  # bands that do not divide the height
    assert np.array_equal(out[alpha == 0], orig[alpha == 0])
    assert np.array_equal(out[alpha == 1], edit[alpha == 1])
    a = alpha[..., None]
    want = np.clip(np.rint(a * edit.astype(np.float32) + (1 - a) * orig.astype(np.float32)), 0, 255)
    assert np.array_equal(out, want.astype(np.uint8))


@pytest.mark.parametrize("bbox,image_hw", [((300, 400, 377, 561), (750, 1000)), ((0, 0, 3, 3), (50, 70)),
                                           ((740, 990, 750, 1000), (750, 1000)), ((0, 0, 750, 1000), (750, 1000))])
def test_context_box_contains_the_dilated_mask_and_fits(bbox, image_hw) -> None:
    t, l, b, r = imaging.context_box(bbox, image_hw, (64, 64), grow_px=8, context=0.5)
    H, W = image_hw
    assert 0 <= t < b <= H and 0 <= l < r <= W
    assert t <= max(bbox[0] - 8, 0) and l <= max(bbox[1] - 8, 0)
    assert b >= min(bbox[2] + 8, H) and r >= min(bbox[3] + 8, W)
    if H >= 64 and W >= 64:
        assert b - t >= 64 and r - l >= 64


def test_tiles_cover_with_overlap() -> None:
    assert imaging.tile_starts(50, 64, 16) == [0]
    starts = imaging.tile_starts(211, 64, 16)
    assert starts[0] == 0 and starts[-1] == 211 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))
    w = imaging.tile_weight(8, 8, 2, 2)
    assert w.min() > 0 and w.max() == 1
    assert imaging.pad_to(gradient(3, 5), (4, 4)).shape == (4, 5, 3)


def test_encode_png_has_no_metadata() -> None:
    rgb = gradient(6, 6)
    assert png_chunk_types(imaging.encode_png(rgb)) == ["IHDR", "IDAT", "IEND"]
    decoded = imaging.decode_image(png_with_metadata(rgb), max_pixels=MP)
    out = imaging.encode_png(decoded.rgb, decoded.alpha)
    assert set(png_chunk_types(out)) == {"IHDR", "IDAT", "IEND"}
    mask_png = imaging.encode_mask_png(rect_mask(4, 4, (0, 0, 2, 2)))
    assert Image.open(io.BytesIO(mask_png)).mode == "L"


def test_encode_png_is_lossless_and_smaller_than_the_default_strategy_on_skin_texture() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    skin = np.stack([180 + xx // 8, 130 + yy // 8, 110 + (xx + yy) // 16], -1) + rng.integers(-8, 9, (128, 128, 3))
    skin = skin.clip(0, 255).astype(np.uint8)  # a smooth tone with pore-scale noise
    out = imaging.encode_png(skin)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), skin)
    default = io.BytesIO()
    Image.fromarray(skin).save(default, format="PNG", compress_level=1)
    assert len(out) < len(default.getvalue())


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (41, 1), (3, 5), (128, 96)])
def test_png_writers_round_trip_through_pillow(shape: tuple[int, int]) -> None:
    """libpng (imagecodecs) writes them, Pillow -- as any client would -- reads them back exactly: RGB,
    RGB from a transposed (non-contiguous) view, RGBA, two-level masks and grey levels."""
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    chw_view = np.ascontiguousarray(rgb.transpose(2, 0, 1)).transpose(1, 2, 0)  # as from_model_output gives
    mask = rng.random((h, w)) > 0.5
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)

    def read(png: bytes) -> tuple[str, np.ndarray]:
        with Image.open(io.BytesIO(png)) as im:
            return im.mode, np.asarray(im)

    for png, mode, want in ((imaging.encode_png(rgb), "RGB", rgb),
                            (imaging.encode_png(chw_view), "RGB", rgb),
                            (imaging.encode_png(rgb, alpha), "RGBA", np.dstack([rgb, alpha])),
                            (imaging.encode_mask_png(mask), "L", mask.astype(np.uint8) * 255),
                            (imaging.encode_mask_png(grey), "L", grey)):
        got_mode, got = read(png)
        assert got_mode == mode and np.array_equal(got, want)
        assert set(png_chunk_types(png)) == {"IHDR", "IDAT", "IEND"}  # no metadata


@pytest.mark.parametrize("orientation", [1, 6])
def test_decode_for_model_reduces_a_jpeg_and_reports_its_full_oriented_size(orientation: int) -> None:
    """/eczema/segment only needs the image shrunk to the model's input: a JPEG decodes at 1/2-1/8 scale
    (never below `reduce_to` a side), oriented as EXIF says, and the full size still comes back (the mask
    answered is that size); the reduced pixels match a full decode shrunk the same way within a level or so."""
    h, w = 600, 1000
    data = encode(gradient(h, w), "JPEG", quality=95, exif=exif_bytes(orientation))
    shown = (w, h) if orientation == 6 else (h, w)
    rgb, full = imaging.decode_for_model(data, max_pixels=MP, reduce_to=100)
    assert full == shown
    assert rgb.shape[:2] == (shown[0] // 4, shown[1] // 4)  # 1/4: 1/8 would make a side 75 < 100
    whole = imaging.decode_image(data, max_pixels=MP).rgb
    assert whole.shape[:2] == shown
    small = imaging.resize_rgb(whole, rgb.shape[:2]).astype(int)
    assert np.abs(small - rgb).mean() < 2.0
    png = encode(gradient(h, w))
    rgb, full = imaging.decode_for_model(png, max_pixels=MP, reduce_to=100)
    assert full == (h, w) and rgb.shape[:2] == (h, w)  # other formats decode whole
    with pytest.raises(PayloadTooLarge):
        imaging.decode_for_model(data, max_pixels=h * w - 1, reduce_to=100)  # the limit counts full pixels


@pytest.mark.parametrize("save", [{"mode": "L"}, {"mode": "CMYK"}, {"progressive": True}, {"subsampling": 0}])
def test_decode_for_model_reduces_every_kind_of_jpeg(save: dict) -> None:
    data = encode(gradient(800, 1200), "JPEG", quality=92, **save)
    small, full = imaging.decode_for_model(data, max_pixels=MP * 10, reduce_to=256)
    assert full == (800, 1200) and small.shape == (400, 600, 3) and small.dtype == np.uint8
    whole = imaging.decode_image(data, max_pixels=MP * 10).rgb
    assert np.abs(imaging.resize_rgb(whole, (400, 600)).astype(int) - small).mean() < 2.0


def test_resize_helpers() -> None:
    assert imaging.resize_rgb(gradient(10, 20), (5, 7)).shape == (5, 7, 3)
    assert imaging.resize_mask(rect_mask(10, 10, (0, 0, 5, 5)), (20, 20))[:10, :10].all()


def test_resized_logits_are_pillows_bilinear_resize_and_their_sign() -> None:
    """imaging.Logits resizes 128 + 2**20 * logit: its values are the plain float resize's, and its mask
    (from the 8-bit copy) is where that resize is positive, but for logits within ~1e-4 of 0."""
    rng = np.random.default_rng(3)
    for shape, hw in (((128, 128), (3000, 4000)), ((128, 128), (50, 70)), ((64, 64), (64, 64)), ((5, 7), (333, 91))):
        x = (rng.standard_normal(shape) * rng.choice([0.01, 4.0, 40.0])).astype(np.float32)
        plain = x if shape == hw else np.asarray(
            Image.fromarray(x, "F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR), dtype=np.float32)
        resized = imaging.Logits(x, hw)
        values, positive = resized.values(), resized.positive()
        assert values.shape == positive.shape == hw and positive.dtype == bool
        assert np.abs(values - plain).max() < 1e-5 * max(1.0, float(np.abs(x).max()))
        sure = np.abs(plain) > 1e-4
        assert np.array_equal(positive[sure], plain[sure] > 0), (shape, hw)
        assert np.array_equal(positive, values >= imaging.LOGIT_THRESHOLD)  # the probability answer's mask
    # 0.75 * 2**-20 is 128.75 shifted: Pillow's float -> 8-bit conversion must truncate it (to 128), as the
    # probability answer's `values() >= LOGIT_THRESHOLD` does; one that rounded would make the two answers differ
    edge = imaging.Logits(np.array([[-1e30, -1e-6, 0.0, 0.75 * 2.0**-20, 2.0**-20, 1e-6, 1e30]], np.float32), (1, 7))
    assert edge.positive().tolist() == [[False, False, False, False, True, True, True]]
    assert np.array_equal(edge.positive(), edge.values() >= imaging.LOGIT_THRESHOLD)
    assert imaging.Logits(np.full((4, 4), 3, np.float32), (8, 2)).values() == pytest.approx(3.0)


def test_a_display_p3_photograph_is_decoded_to_srgb() -> None:
    """Outputs carry no ICC profile, so they are sRGB: a Display P3 image's numbers are converted (its
    reds come out more saturated, as a colour-managed viewer shows them), alpha kept; images without a
    profile, with sRGB's, or with an unreadable one keep their numbers."""
    rgb = gradient(30, 40)
    p3 = display_p3_icc()
    want = np.asarray(ImageCms.profileToProfile(Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(p3)),
                                                ImageCms.createProfile("sRGB"), outputMode="RGB",
                                                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC))
    got = imaging.decode_image(encode(rgb, icc_profile=p3), max_pixels=10**6)
    assert np.array_equal(got.rgb, want) and not np.array_equal(got.rgb, rgb)
    red = imaging.decode_image(encode(np.full((2, 2, 3), (180, 60, 60), np.uint8), icc_profile=p3), max_pixels=100)
    r, g, b = red.rgb[0, 0].astype(int)
    assert r > 190 and g < 50 and b < 55  # P3's red is redder than the same numbers in sRGB
    rgba = np.dstack([rgb, np.full((30, 40), 77, np.uint8)])
    with_alpha = imaging.decode_image(encode(rgba, icc_profile=p3), max_pixels=10**6)
    assert np.array_equal(with_alpha.rgb, want) and (with_alpha.alpha == 77).all()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, b"\0" * 128 + b"not a profile"):
        assert np.array_equal(imaging.decode_image(encode(rgb, icc_profile=icc), max_pixels=10**6).rgb, rgb)


def test_the_probability_map_and_the_mask_agree_at_the_threshold() -> None:
    """Logits at and around 0 (where round(255 p) alone would say 128 for p = 0.5, not in the mask)."""
    from dermagan.service import pipeline

    logits = np.array([[[-30.0, -1e-6, 0.0, 1e-6, 2.0, 40.0]]], np.float32)
    plan = pipeline.Segmentation((1, 6), {})
    mask = np.asarray(Image.open(io.BytesIO(pipeline.finish_segment(plan, logits))))
    prob = np.asarray(Image.open(io.BytesIO(pipeline.finish_segment(plan, logits, "probability"))))
    assert mask.tolist() == [[0, 0, 0, 255, 255, 255]]
    assert prob.tolist() == [[0, 127, 127, 128, 225, 255]]


def _no_decoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoded: the refusal must come from the header")


def test_a_very_thin_image_is_refused_from_its_header_before_a_mask_free_edit_pads_it(monkeypatch) -> None:
    """Shrinking never enlarges, so a side under the tile was edge-padded up to it: 1 x 2,000,000 px (a PNG of
    a few KB) became a 128 x 2,000,000 working area, plus 16 bytes a pixel of it to blend the tiles: GBs."""
    from dermagan.service import pipeline

    thin = encode(np.full((1, 2_000_000, 3), 128, np.uint8))
    assert len(thin) < 10_000
    monkeypatch.setattr(imaging, "decode_image", _no_decoding)
    with pytest.raises(PayloadTooLarge) as refused:
        pipeline.plan_tiled_edit(thin, (128, 128), max_pixels=16 * MP, overlap=0.25, work_px=128)
    detail = refused.value.detail
    assert "2000000x1" in detail and "2,000,000:1" in detail and "too thin for an edit without a mask" in detail
    assert "2000000x128 = 256000000 pixels" in detail and "16000000 (DERMAGAN_MAX_PIXELS)" in detail
    with pytest.raises(PayloadTooLarge):  # the charge for the image budget refuses it too (the service asks first)
        pipeline.tiled_pixels(thin, (128, 128), work_px=128, max_pixels=16 * MP)
    # an image the decoder refuses anyway takes nothing (it names the problem: too many pixels, unreadable)
    assert pipeline.tiled_pixels(png_declaring(20_000_000, 1), (128, 128), work_px=128, max_pixels=16 * MP) == 0
    assert pipeline.tiled_pixels(b"not an image", (128, 128), work_px=128, max_pixels=16 * MP) == 0


def _held_bytes(*arrays: np.ndarray) -> int:
    """Bytes of the distinct buffers among `arrays` (a view of another counts once)."""
    distinct: list[np.ndarray] = []
    for a in arrays:
        if not any(np.shares_memory(a, b) for b in distinct):
            distinct.append(a)
    return sum(a.nbytes for a in distinct)


def test_the_image_budget_of_a_mask_free_edit_counts_its_working_memory() -> None:
    """A mask-free edit holds its image and, per pixel of its working area, float32 sums and weights: at full
    resolution ~19 bytes a pixel against a masked edit's ~4, which is what a pixel of the budget stands for.
    Charging the image's pixels alone let a budget of 50 MP hold ~5x the memory it was sized for."""
    from dermagan.service import pipeline

    cases = (((3, 500), 32, 32),  # a strip, padded to 32 x 500
             ((150, 211), 64, 32),  # shrunk
             ((150, 211), 150, 32),  # at full resolution
             ((5, 5), 32, 32),  # padded to one tile
             ((40, 300), 48, 32))  # shrunk and padded
    for (h, w), work_px, tile in cases:
        image = encode(gradient(h, w))
        plan = pipeline.plan_tiled_edit(image, (tile, tile), max_pixels=MP, overlap=0.25, work_px=work_px)
        blender = pipeline.TileBlender(plan)
        held = _held_bytes(plan.image.rgb, plan.work, plan.padded, blender._acc, blender._weight)
        assert pipeline.tiled_bytes((h, w), (tile, tile), work_px) == held, ((h, w), work_px)
        charged = pipeline.tiled_pixels(image, (tile, tile), work_px=work_px, max_pixels=MP)
        assert charged == max(h * w, -(-held // pipeline.BUDGET_BYTES_PER_PIXEL))
    full = pipeline.tiled_pixels(encode(gradient(150, 211)), (32, 32), work_px=150, max_pixels=MP)
    assert full >= 4.5 * 150 * 211  # 19 bytes a pixel, in pixels of 4 bytes
    # the default work_px shrinks a photograph to a small working area: it counts the image's pixels
    assert pipeline.tiled_pixels(encode(gradient(600, 800)), (32, 32), work_px=32, max_pixels=MP) == 600 * 800
    # an edit with a mask or a segmentation holds its image's pixels; one the decoder refuses at once, none
    assert pipeline.image_pixels(encode(gradient(600, 800)), max_pixels=MP) == 600 * 800
    assert pipeline.image_pixels(encode(gradient(600, 800)), max_pixels=600 * 800 - 1) == 0
    assert pipeline.image_pixels(b"not an image", max_pixels=MP) == 0
    strip = gradient(3, 500)
    plan = pipeline.plan_tiled_edit(encode(strip), (32, 32), max_pixels=MP, overlap=0.25, work_px=32)
    assert plan.padded.shape[:2] == (32, 500)  # what was charged, and thin images within the limit still work
    with pytest.raises(PayloadTooLarge, match="too thin"):
        pipeline.plan_tiled_edit(encode(strip), (32, 32), max_pixels=32 * 500 - 1, overlap=0.25, work_px=32)
    # the header's size as EXIF orientation shows it (what a model of another aspect ratio is padded to)
    assert imaging.header_size(encode(gradient(4, 6), "JPEG", exif=exif_bytes(6))) == (6, 4)
    assert imaging.header_size(encode(gradient(4, 6))) == (4, 6) and imaging.header_size(b"nothing") is None


def test_an_image_with_alpha_holds_its_alpha_in_the_budget_too() -> None:
    """Decoding keeps an alpha channel beside the RGB (one byte a pixel more, for the answer): the budget
    charges it, from the header -- an alpha mode, or a palette or RGB image with a transparent colour."""
    from dermagan.service import pipeline

    rgb = gradient(150, 211)
    rgba = np.dstack([rgb, np.full((150, 211), 200, np.uint8)])
    keyed = Image.fromarray(rgb).convert("P")
    buf = io.BytesIO()
    keyed.save(buf, "PNG", transparency=0)
    with_alpha = {"RGBA": encode(rgba), "LA": encode(rgba, mode="LA"), "P + tRNS": buf.getvalue(),
                  "WebP RGBA": encode(rgba, "WEBP", lossless=True)}
    without = {"RGB": encode(rgb), "L": encode(rgb, mode="L"), "P": encode(rgb, mode="P"), "JPEG": encode(rgb, "JPEG")}
    for name, data in {**with_alpha, **without}.items():
        has = name in with_alpha
        head = imaging.header(data)
        assert head == (150, 211, has), name
        assert (imaging.decode_image(data, max_pixels=MP).alpha is not None) == has, name  # as the decoder keeps it
        assert pipeline.image_pixels(data, max_pixels=MP) == (-(-150 * 211 * 5 // 4) if has else 150 * 211), name
    # a mask-free edit at full resolution: what its plan and blender hold, alpha included, is what it is charged
    plan = pipeline.plan_tiled_edit(with_alpha["RGBA"], (32, 32), max_pixels=MP, overlap=0.25, work_px=150)
    blender = pipeline.TileBlender(plan)
    assert plan.image.alpha is not None
    held = _held_bytes(plan.image.rgb, plan.image.alpha, plan.work, plan.padded, blender._acc, blender._weight)
    assert pipeline.tiled_bytes((150, 211), (32, 32), 150, alpha=True) == held
    assert pipeline.tiled_pixels(with_alpha["RGBA"], (32, 32), work_px=150, max_pixels=MP) == -(-held // 4)
    assert pipeline.tiled_bytes((150, 211), (32, 32), 150) == held - 150 * 211
    # the size over the limit, or an unreadable header: nothing, as before
    assert pipeline.image_pixels(with_alpha["RGBA"], max_pixels=150 * 211 - 1) == 0
    assert imaging.header(b"nothing") is None


@pytest.mark.parametrize("fmt,w,h,refused", [("webp", 16_384, 2, True), ("webp", 2, 17_000, True),
                                             ("jpeg", 65_501, 1, True), ("webp", 16_383, 2, False),
                                             ("jpeg", 65_500, 1, False), ("png", 70_000, 1, False)])
def test_an_output_format_that_cannot_hold_the_image_is_refused_from_the_header(monkeypatch, fmt, w, h, refused) -> None:
    """WebP holds at most 16383 px a side and libjpeg 65500: the encoder raised after the model had run (500)."""
    from dermagan.service import pipeline

    monkeypatch.setattr(imaging, "decode_image", _no_decoding)
    output = imaging.OutputFormat(fmt)
    if refused:
        with pytest.raises(InvalidParameter) as e:
            pipeline._decode_for(png_declaring(w, h), MP, output)
        side = f"{w} px wide" if w >= h else f"{h} px high"
        assert e.value.detail == (f"format {fmt} allows at most {imaging.OutputFormat.MAX_SIDE[fmt]} px a side; "
                                  f"this image is {side} ({w}x{h}): ask for png")
    else:
        with pytest.raises(AssertionError, match="decoded"):
            pipeline._decode_for(png_declaring(w, h), MP, output)


def test_the_side_limits_are_the_encoders_own() -> None:
    for fmt, most in imaging.OutputFormat.MAX_SIDE.items():
        assert imaging.encode_image(np.zeros((1, most, 3), np.uint8), None, imaging.OutputFormat(fmt))
        with pytest.raises((OSError, ValueError)):
            imaging.encode_image(np.zeros((1, most + 1, 3), np.uint8), None, imaging.OutputFormat(fmt))


def test_a_sixteen_bit_grey_png_keeps_its_transparent_grey_as_alpha() -> None:
    import struct

    samples = np.array([[0, 300, 301, 65535]], np.uint16)[..., None]
    d = imaging.decode_image(png_raw(samples, 16, 0, before=png_chunk(b"tRNS", struct.pack(">H", 300))), max_pixels=MP)
    assert d.alpha is not None and d.alpha.tolist() == [[255, 0, 255, 255]]  # the 16-bit value, not its 8-bit level
    assert d.rgb[..., 0].tolist() == [[0, 1, 1, 255]]
    assert imaging.decode_image(png_raw(samples, 16, 0), max_pixels=MP).alpha is None


def test_an_opaque_alpha_channel_is_no_transparency_for_jpeg() -> None:
    from dermagan.service import pipeline

    rgb = gradient(40, 48)
    opaque = encode(np.dstack([rgb, np.full((40, 48), 255, np.uint8)]))
    jpeg = imaging.OutputFormat("jpeg")
    plan = pipeline.plan_masked_edit(opaque, encode(rect_mask(40, 48, (10, 10, 20, 20))), (32, 32), max_pixels=MP,
                                     dilate_px=2, context=0.5, output=jpeg)
    assert plan.image.alpha is None and np.array_equal(plan.image.rgb, rgb)
    out = pipeline.finish_masked_edit(plan, plan.inputs["image"][0], dilate_px=2)
    assert Image.open(io.BytesIO(out)).format == "JPEG"
    # png and webp keep the channel as it came
    assert pipeline._decode_for(opaque, MP, imaging.OutputFormat("png")).alpha is not None
    one_translucent = np.dstack([rgb, np.full((40, 48), 255, np.uint8)])
    one_translucent[3, 4, 3] = 254
    with pytest.raises(InvalidParameter, match=r"has transparent pixels \(alpha below 255\); ask for png or webp"):
        pipeline._decode_for(encode(one_translucent), MP, jpeg)
