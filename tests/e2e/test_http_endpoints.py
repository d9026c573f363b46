"""Every endpoint over real HTTP against the fixture models: round trips, the outside-mask
bit-identity guarantee, determinism by seed, batch invariance, batching under load, bad inputs,
metadata stripping."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import re
import socket

import httpx
import numpy as np
import pytest
from conftest import gauge, live_server, settings_for
from fixture_models import build_models
from PIL import Image
from sample_images import (decode, display_p3_icc, encode, exif_bytes, gradient, mask_png, png_chunk, png_chunk_types,
                           png_declaring, png_raw, png_with_metadata, rect_mask)

from dermagan.service import imaging


def post_edit(client: httpx.Client, path: str, image: bytes, mask: bytes | None = None) -> httpx.Response:
    files = {"image": ("image", image, "application/octet-stream")}
    if mask is not None:
        files["mask"] = ("mask", mask, "image/png")
    return client.post(path, files=files)


# ---- round trips -----------------------------------------------------------------------------

def test_operations_endpoints(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and len(ready.json()["models"]) == 6
    models = client.get("/v1/models").json()
    assert {m["task"] for m in models} == {"generate", "add", "remove", "cycle-add", "cycle-remove", "segment"}
    assert all(m["provider"] == "CPUExecutionProvider" and m["ready"] for m in models)
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/eczema/add"]["post"]["requestBody"]["content"]
    text = client.get("/metrics").text
    assert 'dermagan_model_info{model="fixture-add",provider="CPUExecutionProvider",version="0-fixture"} 1.0' in text


@pytest.mark.parametrize("path", ["/eczema/add", "/eczema/remove"])
def test_masked_edit_keeps_every_pixel_outside_the_dilated_mask(client: httpx.Client, path: str) -> None:
    h, w = 750, 1000  # odd sizes: the crop is resized to 64x64 and back
    rgb = gradient(h, w)
    mask = rect_mask(h, w, (301, 403, 377, 561))
    r = post_edit(client, path, encode(rgb), mask_png(mask))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"  # made from the user's image: no cache may keep it
    out = decode(r.content)
    assert out.shape == (h, w, 3)
    near = imaging.dilate(mask, 8)  # DERMAGAN_MASK_DILATE_PX default
    assert np.array_equal(out[~near], rgb[~near])
    assert (out[mask] != rgb[mask]).any()  # the model did something inside


def _textured(h: int, w: int) -> np.ndarray:
    checker = np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 20, -20)
    return np.clip(gradient(h, w).astype(np.int16) // 2 + 64 + checker[..., None], 0, 255).astype(np.uint8)


def _texture_kept(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> float:
    """Share of pixels in `where` whose step to the right-hand neighbour keeps its sign."""
    d_in, d_out = np.diff(before.astype(np.int16), axis=1), np.diff(after.astype(np.int16), axis=1)
    return float((np.sign(d_in) == np.sign(d_out))[where[:, 1:]].mean())


def test_edits_of_a_large_photo_keep_its_fine_texture_where_wanted(client: httpx.Client) -> None:
    """The mask's box (~400 px) is edited at 64 px. /eczema/add puts the photograph's own detail back on
    the model's output; /eczema/remove only where its model changed little (the fixture's random
    weights change everything, so there the texture goes, as an eczema's would)."""
    rgb = _textured(600, 800)
    mask = rect_mask(600, 800, (150, 200, 450, 600))
    inner = imaging.dilate(~mask, 2) == 0  # away from the mask's edge, where the feathering is
    added = post_edit(client, "/eczema/add", encode(rgb), mask_png(mask))
    removed = post_edit(client, "/eczema/remove", encode(rgb), mask_png(mask))
    assert added.status_code == removed.status_code == 200
    assert _texture_kept(rgb, decode(added.content), inner) > 0.95
    assert _texture_kept(rgb, decode(removed.content), inner) < 0.7


def _rows(client: httpx.Client, model: str) -> float:
    """Rows the model has run (tiles, for the CycleGAN), from /metrics."""
    m = re.search(rf'^dermagan_batch_size_sum{{model="{model}"}} (\S+)$', client.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_mask_free_edit_sees_the_image_at_work_px(client: httpx.Client) -> None:
    """Without a mask the whole image is one field of view at the model's resolution, as in training
    (600 x 800 -> 64 x 85: 2 tiles), its detail put back; `work_px` sets a finer scale (here the
    image's own: 221 tiles of 64 px)."""
    rgb = _textured(600, 800)
    everywhere = np.ones((600, 800), bool)
    for form, shape in (({}, (64, 85)), ({"work_px": "600"}, (600, 800)), ({"work_px": "5000"}, (600, 800))):
        before = _rows(client, "fixture-cycle-add")
        r = client.post("/eczema/add", files={"image": ("i", encode(rgb))}, data=form)
        assert r.status_code == 200, r.text
        out = decode(r.content)
        assert out.shape == (600, 800, 3)
        tiles = len(imaging.tile_starts(shape[0], 64, 16)) * len(imaging.tile_starts(shape[1], 64, 16))
        assert _rows(client, "fixture-cycle-add") - before == tiles
        if not form:  # shrunk: the fine texture is the photograph's, put back
            assert _texture_kept(rgb, out, everywhere) > 0.95


@pytest.mark.parametrize("path,work_px,with_mask,problem", [
    ("/eczema/add", "63", False, "from 64"),
    ("/eczema/add", "12.5", False, "whole number"),
    ("/eczema/remove", "-100", False, "whole number"),
    ("/eczema/remove", "9" * 5000, False, "whole number"),  # int() refuses > 4300 digits
    ("/eczema/add", "128", True, "without a mask"),
    ("/eczema/segment", "128", False, "unexpected multipart fields ['work_px']"),
])
def test_bad_work_px_is_a_clear_422(client: httpx.Client, path, work_px, with_mask, problem) -> None:
    files = {"image": ("i", encode(gradient(100, 120)))}
    if with_mask:
        files["mask"] = ("m", mask_png(rect_mask(100, 120, (10, 10, 50, 50))))
    r = client.post(path, files=files, data={"work_px": work_px})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_parameter" and problem in r.json()["detail"]


@pytest.mark.parametrize("path,with_mask", [("/eczema/remove", True), ("/eczema/add", False)])
def test_results_as_jpeg_or_webp(client: httpx.Client, path: str, with_mask: bool) -> None:
    """`format` jpeg / webp: the same picture, lossy, smaller at a lower `quality`; no input metadata."""
    rgb = _textured(300, 400)
    files = {"image": ("i", encode(rgb, "JPEG", quality=95, exif=exif_bytes(1, gps=True)))}
    if with_mask:
        files["mask"] = ("m", mask_png(rect_mask(300, 400, (100, 100, 200, 250))))
    png = decode(client.post(path, files=files).content).astype(np.int16)
    sizes = {}
    for form, media in (({"format": "jpeg"}, "image/jpeg"), ({"format": "JPG", "quality": "40"}, "image/jpeg"),
                        ({"format": "webp"}, "image/webp"), ({"format": "webp", "quality": "40"}, "image/webp")):
        r = client.post(path, files=files, data=form)
        assert r.status_code == 200 and r.headers["content-type"] == media, r.text
        out = Image.open(io.BytesIO(r.content))
        assert out.format == media.split("/")[1].upper() and out.size == (400, 300) and out.mode == "RGB"
        assert not out.getexif() and "icc_profile" not in out.info and "exif" not in out.info
        assert np.abs(np.asarray(out).astype(np.int16) - png).mean() < (12 if "quality" in form else 4)
        sizes[media, "quality" in form] = len(r.content)
    assert sizes["image/jpeg", True] < sizes["image/jpeg", False] and sizes["image/webp", True] < sizes["image/webp", False]


def test_transparent_image_as_jpeg_is_refused_and_kept_by_webp(client: httpx.Client) -> None:
    rgba = np.dstack([gradient(40, 50), np.full((40, 50), 200, np.uint8)])
    files = {"image": ("i", encode(rgba)), "mask": ("m", mask_png(rect_mask(40, 50, (10, 10, 20, 20))))}
    r = client.post("/eczema/add", files=files, data={"format": "jpeg"})
    assert r.status_code == 422 and "format jpeg has no alpha channel" in r.json()["detail"]
    r = client.post("/eczema/add", files=files, data={"format": "webp"})
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert r.status_code == 200 and out.shape == (40, 50, 4) and (np.abs(out[..., 3].astype(int) - 200) <= 2).all()


@pytest.mark.parametrize("path,form,problem", [
    ("/eczema/add", {"format": "gif"}, "format must be one of png, jpeg, webp, got 'gif'"),
    ("/eczema/remove", {"quality": "80"}, "quality applies to format jpeg or webp"),
    ("/eczema/add", {"format": "jpeg", "quality": "0"}, "from 1 to 100, got '0'"),
    ("/eczema/add", {"format": "webp", "quality": "9.5"}, "from 1 to 100, got '9.5'"),
    ("/eczema/segment", {"format": "jpeg"}, "unexpected multipart fields ['format']"),
])
def test_bad_output_format_is_a_clear_422(client: httpx.Client, path, form, problem) -> None:
    r = client.post(path, files={"image": ("i", encode(gradient(100, 120)))}, data=form)
    assert r.status_code == 422 and r.json()["error"] == "invalid_parameter" and problem in r.json()["detail"], r.text


def test_an_iphone_heic_photograph_is_edited_like_a_jpeg(client: httpx.Client) -> None:
    """HEIC (pillow-heif): decoded, its Display P3 profile converted to sRGB, edited inside the mask only."""
    pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    Image.fromarray(gradient(60, 80)).save(buf, format="HEIF", quality=95, icc_profile=display_p3_icc())
    heic = buf.getvalue()
    shown = imaging.decode_image(heic, max_pixels=10**6).rgb
    assert shown.shape == (60, 80, 3) and np.abs(shown.astype(int) - gradient(60, 80)).mean() > 1  # P3 -> sRGB
    mask = rect_mask(60, 80, (20, 20, 40, 40))
    r = post_edit(client, "/eczema/add", heic, mask_png(mask))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    near = imaging.dilate(mask, 8)
    assert np.array_equal(decode(r.content)[~near], shown[~near])
    gif = io.BytesIO()
    Image.fromarray(gradient(8, 8)).save(gif, format="GIF")
    r = post_edit(client, "/eczema/add", gif.getvalue())
    assert r.status_code == 415 and "expected a PNG, JPEG, WebP or HEIC image, got a GIF image" in r.json()["detail"]


def test_a_mask_drawn_on_a_turned_photographs_stored_pixels_is_refused_with_the_reason(client: httpx.Client) -> None:
    jpeg = encode(gradient(60, 90), "JPEG", quality=95, exif=exif_bytes(6))  # stored 90 wide, shown 60 wide
    r = post_edit(client, "/eczema/add", jpeg, mask_png(rect_mask(60, 90, (10, 10, 20, 20))))
    assert r.status_code == 422
    assert "mask is 90x60 but the image is 60x90" in r.json()["detail"] and "EXIF orientation" in r.json()["detail"]
    plain = encode(gradient(90, 60))  # the same sizes without EXIF: no word of orientation
    r = post_edit(client, "/eczema/add", plain, mask_png(rect_mask(60, 90, (10, 10, 20, 20))))
    assert r.status_code == 422 and "EXIF" not in r.json()["detail"]


def test_exif_rotated_jpeg_is_oriented_and_kept_outside_the_mask(client: httpx.Client) -> None:
    stored = gradient(60, 90)  # as stored; EXIF orientation 6 = rotate 90 degrees clockwise to display
    jpeg = encode(stored, "JPEG", quality=95, exif=exif_bytes(6))
    shown = imaging.decode_image(jpeg, max_pixels=10**6).rgb
    assert shown.shape == (90, 60, 3)
    mask = rect_mask(90, 60, (40, 20, 55, 35))
    r = post_edit(client, "/eczema/add", jpeg, mask_png(mask))
    assert r.status_code == 200, r.text
    out = decode(r.content)
    assert out.shape == (90, 60, 3)
    near = imaging.dilate(mask, 8)
    assert np.array_equal(out[~near], shown[~near])


def test_mask_free_edits_and_segment_keep_the_size(client: httpx.Client) -> None:
    rgb = gradient(150, 211)  # several overlapping 64x64 tiles
    for path in ("/eczema/add", "/eczema/remove"):
        r = post_edit(client, path, encode(rgb))
        assert r.status_code == 200, r.text
        assert r.headers["x-dermagan-model"].startswith("fixture-cycle-")
        assert decode(r.content).shape == (150, 211, 3) and r.headers["cache-control"] == "no-store"
        shas = {m["name"]: m["sha256"] for m in client.get("/v1/models").json()}
        assert r.headers["x-dermagan-model-sha256"] == shas[r.headers["x-dermagan-model"]]  # which file made it
    r = post_edit(client, "/eczema/segment", encode(rgb, "WEBP", lossless=True))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    mask = decode(r.content)
    assert mask.shape == (150, 211) and set(np.unique(mask)) <= {0, 255}
    # a JPEG decodes at a reduced scale for the segmenter; the mask keeps the full size, as EXIF shows it
    r = post_edit(client, "/eczema/segment", encode(gradient(600, 1000), "JPEG", quality=90, exif=exif_bytes(6)))
    assert r.status_code == 200, r.text
    assert decode(r.content).shape == (1000, 600)


def test_small_image_without_mask_is_padded_to_a_tile(client: httpx.Client) -> None:
    r = post_edit(client, "/eczema/remove", encode(gradient(5, 7)))
    assert r.status_code == 200 and decode(r.content).shape == (5, 7, 3)


def test_alpha_is_kept(client: httpx.Client) -> None:
    rgba = np.dstack([gradient(40, 50), np.full((40, 50), 200, np.uint8)])
    mask = rect_mask(40, 50, (10, 10, 20, 20))
    out = decode(post_edit(client, "/eczema/add", encode(rgba), mask_png(mask)).content)
    assert out.shape == (40, 50, 4) and (out[..., 3] == 200).all()


def test_a_sixteen_bit_grey_png_keeps_its_transparency(client: httpx.Client) -> None:
    samples = (gradient(40, 50)[..., :1].astype(np.uint16) * 257)
    samples[:5, :5] = 1234  # the transparent grey (no gradient pixel has it)
    png = png_raw(samples, 16, 0, before=png_chunk(b"tRNS", (1234).to_bytes(2, "big")))
    out = decode(post_edit(client, "/eczema/add", png, mask_png(rect_mask(40, 50, (20, 20, 30, 30)))).content)
    assert out.shape == (40, 50, 4) and (out[:5, :5, 3] == 0).all() and (out[5:, :, 3] == 255).all()


def test_an_opaque_rgba_image_can_be_had_as_jpeg(client: httpx.Client) -> None:
    """An alpha channel that is 255 everywhere (screenshots, many exports) is no transparency."""
    rgba = np.dstack([gradient(40, 50), np.full((40, 50), 255, np.uint8)])
    for mask in (mask_png(rect_mask(40, 50, (10, 10, 20, 20))), None):
        files = {"image": ("i", encode(rgba)), **({"mask": ("m", mask)} if mask else {})}
        r = client.post("/eczema/add", files=files, data={"format": "jpeg"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
        assert Image.open(io.BytesIO(r.content)).mode == "RGB"
    rgba[0, 0, 3] = 254
    r = client.post("/eczema/add", files={"image": ("i", encode(rgba))}, data={"format": "jpeg"})
    assert r.status_code == 422 and "this image has transparent pixels (alpha below 255)" in r.json()["detail"]


@pytest.mark.parametrize("fmt,w,h,most", [("webp", 17_000, 4, 16383), ("jpeg", 65_501, 2, 65500)])
def test_a_format_too_small_for_the_image_is_a_422_before_any_model_runs(server, fmt: str, w: int, h: int,
                                                                          most: int) -> None:
    """WebP holds at most 16383 px a side, libjpeg 65500: the encoder failed after the model ran (500)."""
    image = encode(np.full((h, w, 3), 90, np.uint8))
    runs = gauge(server.url, "dermagan_batch_size_count")
    with server.client() as c:
        for mask in (None, mask_png(rect_mask(h, w, (0, 0, 2, 2)))):
            files = {"image": ("i", image), **({"mask": ("m", mask)} if mask else {})}
            r = c.post("/eczema/add", files=files, data={"format": fmt})
            assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
            assert r.json()["detail"] == (f"format {fmt} allows at most {most} px a side; this image is {w} px wide "
                                          f"({w}x{h}): ask for png")
    assert gauge(server.url, "dermagan_batch_size_count") == runs, "no model ran"


def test_a_very_thin_image_without_a_mask_is_a_413_from_its_header(server, monkeypatch) -> None:
    """1 x 2,000,000 px (a PNG of ~6 KB) would be padded to the tile: 128 x 2,000,000 for the shipped models,
    gigabytes with the blending buffers. It is refused from its header: nothing decoded, nothing held."""
    from dermagan.service import pipeline

    decoded: list[int] = []
    plan = pipeline.plan_tiled_edit
    monkeypatch.setattr(pipeline, "plan_tiled_edit", lambda *a, **k: decoded.append(1) or plan(*a, **k))
    thin = encode(np.full((1, 2_000_000, 3), 128, np.uint8))
    with server.client() as c:
        r = c.post("/eczema/add", files={"image": ("i", thin)})
        ok = c.post("/eczema/remove", files={"image": ("i", encode(gradient(3, 300)))})  # thin, within the limit
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert ("image is 2000000x1, an aspect ratio of 2,000,000:1, too thin for an edit without a mask: the model works "
            "on 64x64 tiles, so it would be padded to 2000000x64 = 128000000 pixels, over the limit of 16000000 "
            "(DERMAGAN_MAX_PIXELS)") in r.json()["detail"]
    assert ok.status_code == 200 and decode(ok.content).shape == (3, 300, 3)
    assert decoded == [1], "only the second image reached the decoder"
    assert server.runtime.pixels.used == 0


# ---- generate --------------------------------------------------------------------------------

def gen(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/generate", json=body)


def test_generate_is_deterministic_by_seed(client: httpx.Client) -> None:
    one = gen(client, kind="eczema", seed=1234)
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert one.headers["x-dermagan-seed"] == "1234"
    assert decode(one.content).shape == (32, 32, 3)
    assert gen(client, kind="eczema", seed=1234).content == one.content
    assert gen(client, kind="hand", seed=1234).content != one.content  # the label matters
    many = gen(client, kind="eczema", seed=1234, count=3).json()
    assert [i["seed"] for i in many["images"]] == [1234, 1235, 1236]
    assert base64.b64decode(many["images"][0]["png_base64"]) == one.content
    again = gen(client, kind="eczema", seed=1235, format="json").json()
    assert again["images"][0]["png_base64"] == many["images"][1]["png_base64"]
    unseeded = gen(client, kind="lesion", count=2).json()["images"]
    assert unseeded[1]["seed"] == unseeded[0]["seed"] + 1


def test_generate_never_hands_out_a_seed_over_the_largest(client: httpx.Client) -> None:
    """Image i is drawn from seed + i: the last one must be a seed the service takes back (2^53 - 1 at most)."""
    top = 2**53 - 1
    r = gen(client, kind="hand", seed=top - 1, count=3, format="json")
    assert r.status_code == 422 and r.json()["error"] == "invalid_parameter"
    assert r.json()["detail"] == (f"seed + count - 1 must be at most {top} (image i is drawn from seed + i): with count 3 "
                                  f"the largest seed is {top - 2}")
    images = gen(client, kind="hand", seed=top - 2, count=3).json()["images"]
    assert [i["seed"] for i in images] == [top - 2, top - 1, top]
    assert base64.b64decode(images[2]["png_base64"]) == gen(client, kind="hand", seed=top).content


def test_generate_larger_than_max_batch(client: httpx.Client) -> None:
    big = gen(client, kind="hand", seed=7, count=20).json()["images"]  # max_batch 8: three batches
    alone = gen(client, kind="hand", seed=7 + 13).content
    assert len(big) == 20 and base64.b64decode(big[13]["png_base64"]) == alone


def test_generate_takes_up_to_the_configured_max_count(tmp_path) -> None:
    """DERMAGAN_MAX_COUNT is the limit either way: above 64 too (the request model once fixed it at 64)."""
    build_models(tmp_path, only=("generate",))
    for limit in (100, 3):
        with live_server(settings_for(tmp_path, max_count=limit)) as s, s.client() as c:
            assert c.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"][
                "count"]["maximum"] == limit
            assert len(gen(c, kind="lesion", seed=1, count=limit).json()["images"]) == limit
            over = gen(c, kind="lesion", count=limit + 1)
            assert over.status_code == 422 and over.json()["detail"] == (
                f"count is {limit + 1}; at most {limit} (DERMAGAN_MAX_COUNT)")


def test_generate_serves_each_kind_from_its_most_specific_model(tmp_path) -> None:
    build_models(tmp_path, only=("generate",), hand_generator=True)  # shared first, the hand-only one after
    with live_server(settings_for(tmp_path)) as s, s.client() as c:
        hand, eczema = gen(c, kind="hand", seed=5), gen(c, kind="eczema", seed=5)
        assert hand.status_code == eczema.status_code == 200
        assert hand.headers["x-dermagan-model"] == "fixture-hand-generate"  # no label input: z alone
        assert eczema.headers["x-dermagan-model"] == "fixture-generate"
        assert gen(c, kind="hand", seed=5, count=2).json()["model"] == "fixture-hand-generate"
        assert {m["name"]: (m["labels"], m["default"]) for m in c.get("/v1/models").json()} == {
            "fixture-generate": (["eczema", "hand", "lesion"], ["eczema", "lesion"]),
            "fixture-hand-generate": (["hand"], ["hand"])}
        # `model` picks another loaded generator of the kind, the same one draws the same images
        shared = gen(c, kind="hand", seed=5, model="fixture-generate")
        assert shared.status_code == 200 and shared.headers["x-dermagan-model"] == "fixture-generate"
        assert shared.content != hand.content
        assert gen(c, kind="hand", seed=5, model="fixture-hand-generate").content == hand.content
        for model, detail in (("fixture-hand-generate", "model 'fixture-hand-generate' draws ['hand'], not 'eczema'; "
                                                        "the loaded models for task 'generate' with kind 'eczema' are "
                                                        "['fixture-generate']"),
                              ("nope", "model 'nope' is not loaded here; the loaded models for task 'generate' with "
                                       "kind 'eczema' are ['fixture-generate']")):
            r = gen(c, kind="eczema", model=model)
            assert r.status_code == 422 and r.json() == {"error": "invalid_parameter", "detail": detail,
                                                         "request_id": r.headers["x-request-id"]}


def test_generate_draws_the_class_names_of_a_generator_of_ones_own_images(tmp_path) -> None:
    """`dermagan train generate --data` on class folders / a labels CSV gives a generator of their names
    (MEL, NV): POST /generate draws them by name, exactly as spelled; other names are refused with the kinds."""
    build_models(tmp_path, only=("generate",), own_classes=("MEL", "NV"))
    with live_server(settings_for(tmp_path)) as s, s.client() as c:
        mel = gen(c, kind="MEL", seed=3)
        assert mel.status_code == 200 and mel.headers["x-dermagan-model"] == "fixture-own-generate"
        assert gen(c, kind="MEL", seed=3).content == mel.content != gen(c, kind="NV", seed=3).content
        assert gen(c, kind="eczema", seed=3).headers["x-dermagan-model"] == "fixture-generate"
        assert gen(c, kind="NV", count=2).json()["kind"] == "NV"
        kinds = "['MEL', 'NV', 'eczema', 'hand', 'lesion']"
        for kind, detail in (("mel", f"kind 'mel': no loaded generator draws it (did you mean 'MEL'? kinds are "
                                     f"case-sensitive); the kinds here are {kinds} (GET /v1/models lists each "
                                     "generator's labels)"),
                             ("dog", f"kind 'dog': no loaded generator draws it; the kinds here are {kinds} (GET "
                                     "/v1/models lists each generator's labels)")):
            r = gen(c, kind=kind)
            assert r.status_code == 422 and r.json()["detail"] == detail
        for bad in ("../MEL", "", "MEL.", "x" * 65):
            r = gen(c, kind=bad)
            assert r.status_code == 422 and "kind" in r.text, bad
        # the name's rule in words, not pydantic's quoted regex; a stray space or dot gets a suggestion
        assert gen(c, kind="hand ").json()["detail"] == (
            "kind 'hand ': not a kind name (ASCII letters, digits, spaces, '.', '_' and '-', starting with a letter or "
            "digit, not ending with a space or '.', at most 64 characters); did you mean 'hand'?")
        assert gen(c, kind="../MEL").json()["detail"].startswith("kind '../MEL': not a kind name (ASCII letters")
        assert "did you mean" not in gen(c, kind="../MEL").json()["detail"]


def test_segment_answers_the_mask_or_the_probability_map(client: httpx.Client) -> None:
    """output=probability: round(255 p) per pixel, >= 128 exactly where the mask answer is white."""
    rgb = gradient(50, 70)
    rgb[10:30, 20:50] = (200, 40, 40)
    image = encode(rgb)
    mask = client.post("/eczema/segment", files={"image": ("i", image)})
    prob = client.post("/eczema/segment", files={"image": ("i", image)}, data={"output": "probability"})
    assert mask.status_code == prob.status_code == 200 and prob.headers["content-type"] == "image/png"
    m, p = Image.open(io.BytesIO(mask.content)), Image.open(io.BytesIO(prob.content))
    assert m.mode == p.mode == "L" and m.size == p.size == (70, 50) and not p.info
    m, p = np.asarray(m), np.asarray(p)
    assert set(np.unique(m)) <= {0, 255} and len(np.unique(p)) > 10  # levels, not two values
    assert np.array_equal(p >= 128, m == 255)
    r = client.post("/eczema/segment", files={"image": ("i", image)}, data={"output": "logits"})
    assert r.status_code == 422 and r.json()["detail"] == "output must be one of mask, probability, got 'logits'"


def test_edits_and_segment_take_a_named_model_of_their_task(tmp_path) -> None:
    """Two models of one task in a manifest (say the shipped remover and your own): the first serves by
    default, the multipart `model` picks the other; a model of another task gets a 422 that names the
    task the request needs (with or without a mask) and the models that serve it."""
    folder = tmp_path / "models"
    build_models(folder, copies={"mine-cycle-add": "fixture-cycle-add"})
    image, mask = encode(gradient(40, 60)), mask_png(rect_mask(40, 60, (5, 5, 20, 20)))

    def edit(path: str, model: str | None, with_mask: bool = True) -> httpx.Response:
        files = {"image": ("i", image)} | ({"mask": ("m", mask)} if with_mask else {})
        return c.post(path, files=files, data={} if model is None else {"model": model})

    with live_server(settings_for(folder)) as s, s.client() as c:
        assert edit("/eczema/add", None, False).headers["x-dermagan-model"] == "fixture-cycle-add"  # the first
        assert edit("/eczema/add", "mine-cycle-add", False).headers["x-dermagan-model"] == "mine-cycle-add"
        assert edit("/eczema/add", "fixture-add").headers["x-dermagan-model"] == "fixture-add"
        assert edit("/eczema/segment", "fixture-segment", False).status_code == 200
        defaults = {m["name"]: m["default"] for m in c.get("/v1/models").json()}
        assert defaults["fixture-cycle-add"] == ["cycle-add"] and defaults["mine-cycle-add"] == []
        r = edit("/eczema/add", "fixture-add", with_mask=False)
        assert r.status_code == 422 and r.json()["detail"] == (
            "model 'fixture-add' serves task 'add', but this request (an edit without a mask) needs task 'cycle-add'; "
            "the loaded models for task 'cycle-add' are ['fixture-cycle-add', 'mine-cycle-add']")
        r = edit("/eczema/segment", "fixture-remove", with_mask=False)
        assert r.status_code == 422 and "needs task 'segment'; the loaded models for task 'segment' are " \
                                          "['fixture-segment']" in r.json()["detail"]
        assert edit("/eczema/remove", "x" * 500).json()["detail"].startswith(f"model '{'x' * 80}' is not loaded here")


# ---- batching --------------------------------------------------------------------------------

def test_batch_invariance_and_batches_under_load(server, client: httpx.Client) -> None:
    images = [encode(gradient(64 + 3 * i, 80)) for i in range(8)]
    masks = [mask_png(rect_mask(64 + 3 * i, 80, (10, 10 + i, 40, 50))) for i in range(8)]
    alone = [post_edit(client, "/eczema/add", im, m).content for im, m in zip(images, masks)]

    def batch_count() -> tuple[float, float]:
        text = client.get("/metrics").text
        count = float(re.search(r'dermagan_batch_size_count\{model="fixture-add"\} (\S+)', text).group(1))
        total = float(re.search(r'dermagan_batch_size_sum\{model="fixture-add"\} (\S+)', text).group(1))
        return count, total

    c0, s0 = batch_count()
    with server.client() as other, cf.ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            together = list(pool.map(lambda a: post_edit(other, "/eczema/add", *a).content, zip(images, masks)))
            assert together == alone  # the same bytes alone and inside a batch
    c1, s1 = batch_count()
    assert s1 - s0 == 24  # N rows in, N rows out
    assert c1 - c0 < 24, "concurrent requests never shared a batch"


# ---- bad input -------------------------------------------------------------------------------

GOOD = encode(gradient(20, 30))
BAD_CASES = [
    ("not an image", {"image": b"hello world"}, 415, "invalid_image", "PNG, JPEG, WebP or HEIC"),
    # curl -F image=skin.png (without the @) sends the name as the field's text
    ("a file's name", {"image": b"skin.png"}, 415, "invalid_image",
     "got the text 'skin.png', a file's name: send the file itself (curl: -F image=@skin.png, with the @)"),
    ("empty file", {"image": b""}, 415, "invalid_image", "empty"),
    ("GIF", {"image": encode(gradient(8, 8), "GIF")}, 415, "invalid_image", "GIF"),
    ("truncated PNG", {"image": GOOD[: len(GOOD) // 2]}, 415, "invalid_image", "image"),
    ("truncated JPEG", {"image": encode(gradient(64, 64), "JPEG")[:300]}, 415, "invalid_image", "image"),
    ("too many pixels", {"image": png_declaring(5000, 4000)}, 413, "too_large", "pixels"),
    ("bomb", {"image": png_declaring(60000, 60000)}, 413, "too_large", "pixels"),
    ("mask size", {"image": GOOD, "mask": mask_png(np.ones((30, 20), bool))}, 422, "invalid_parameter", "same size"),
    ("empty mask", {"image": GOOD, "mask": mask_png(np.zeros((20, 30), bool))}, 422, "empty_mask", "empty"),
    ("mask not image", {"image": GOOD, "mask": b"%PDF-1.4"}, 415, "invalid_image", "mask"),
    ("no image part", {"mask": GOOD}, 422, "invalid_parameter", "'image'"),
    ("unknown part", {"image": GOOD, "photo": GOOD}, 422, "invalid_parameter", "photo"),
]


@pytest.mark.parametrize("name,files,status,error,words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_uploads_get_their_4xx(client: httpx.Client, name: str, files: dict[str, bytes], status: int,
                                   error: str, words: str) -> None:
    r = client.post("/eczema/add", files={k: (k, v) for k, v in files.items()})
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert words in r.json()["detail"]


BAD_REQUESTS = [
    ("json body", dict(json={"image": "x"}), "/eczema/add", 415, "multipart"),
    ("form body", dict(data={"image": "x"}), "/eczema/segment", 415, "multipart"),
    ("bad kind", dict(json={"kind": "dog"}), "/generate", 422, "kind"),
    ("count 0", dict(json={"kind": "hand", "count": 0}), "/generate", 422, "count"),
    ("count 65", dict(json={"kind": "hand", "count": 65}), "/generate", 422, "count"),
    ("negative seed", dict(json={"kind": "hand", "seed": -1}), "/generate", 422, "seed"),
    # JSON's true, "2" and 1e3 were taken as 1, 2 and 1000 (pydantic's lax mode): numbers only
    ("count true", dict(json={"kind": "hand", "count": True}), "/generate", 422, "count: Input should be a valid integer"),
    ("count text", dict(json={"kind": "hand", "count": "2"}), "/generate", 422, "count: Input should be a valid integer"),
    ("seed float", dict(json={"kind": "hand", "seed": 1e3}), "/generate", 422, "seed: Input should be a valid integer"),
    ("png of 2", dict(json={"kind": "hand", "count": 2, "format": "png"}), "/generate", 422, "format"),
    ("extra field", dict(json={"kind": "hand", "colour": 1}), "/generate", 422, "colour"),
    ("not json", dict(content=b"{", headers={"content-type": "application/json"}), "/generate", 422, "JSON"),
    ("form to generate", dict(data={"kind": "hand"}), "/generate", 422,  # curl -d without a JSON content type
     "expected a JSON body (Content-Type: application/json), got application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize("name,kw,path,status,words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_their_4xx(server, name: str, kw: dict, path: str, status: int, words: str) -> None:
    with server.client() as c:
        r = c.post(path, **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_a_truncated_upload_is_named_as_one(client) -> None:
    image = encode(gradient(64, 64))
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    for body in (head + image, head + image[:len(image) // 2]):  # no closing boundary; half the image, and none
        r = client.post("/eczema/segment", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
        assert r.json()["detail"].startswith("the multipart body ends before its closing boundary '--XyZ--' (a "
                                             "truncated upload?); its part 'image' is cut off after "), r.text
    whole = head + image + b"\r\n--XyZ--\r\n"
    r = client.post("/eczema/segment", content=whole, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 200, r.text


def test_declared_huge_body_is_refused_before_it_is_sent(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /eczema/add HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1099511627776\r\n\r\n")
        reply = ""
        while "}" not in reply:  # the status line may come before the body
            chunk = sock.recv(65536).decode("latin-1")
            if not chunk:
                break
            reply += chunk
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"too_large"' in reply and "limit" in reply


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    # the answer lists the paths there are (a typo, a missing or extra prefix shows at once)
    assert client.post("/v2/generate", json={}).json()["detail"] == (
        "POST /v2/generate: Not Found; this service's paths: /eczema/add, /eczema/remove, /eczema/segment, /generate, "
        "/healthz, /metrics, /readyz, /v1/models (GET /docs describes them)")
    assert client.get("/eczema/add").status_code == 405


# ---- privacy ---------------------------------------------------------------------------------

def test_outputs_carry_no_input_metadata(client: httpx.Client) -> None:
    rgb = gradient(40, 60)
    mask = mask_png(rect_mask(40, 60, (5, 5, 20, 20)))
    jpeg = encode(rgb, "JPEG", exif=exif_bytes(1, gps=True), icc_profile=b"\x00" * 128 + b"icc")
    inputs = [png_with_metadata(rgb), jpeg]
    assert "iCCP" in png_chunk_types(inputs[0]) and "tEXt" in png_chunk_types(inputs[0])
    for data in inputs:
        for r in (post_edit(client, "/eczema/add", data, mask), post_edit(client, "/eczema/remove", data),
                  post_edit(client, "/eczema/segment", data)):
            assert r.status_code == 200, r.text
            assert set(png_chunk_types(r.content)) <= {"IHDR", "IDAT", "IEND"}, png_chunk_types(r.content)
            assert b"Jane" not in r.content and b"dermagan-test-camera" not in r.content
            assert not Image.open(io.BytesIO(r.content)).info


def test_a_display_p3_photograph_comes_back_in_srgb_without_its_profile(client: httpx.Client) -> None:
    """The answer carries no ICC profile, so its numbers are sRGB: outside the mask they are the input's
    colours converted from Display P3 (bit-identical to that conversion), not its raw numbers."""
    rgb = gradient(60, 80)
    png = encode(rgb, icc_profile=display_p3_icc())
    shown = imaging.decode_image(png, max_pixels=10**6).rgb
    assert not np.array_equal(shown, rgb)
    mask = rect_mask(60, 80, (20, 20, 40, 40))
    r = post_edit(client, "/eczema/add", png, mask_png(mask))
    assert r.status_code == 200 and set(png_chunk_types(r.content)) <= {"IHDR", "IDAT", "IEND"}
    near = imaging.dilate(mask, 8)
    assert np.array_equal(decode(r.content)[~near], shown[~near])


def test_large_uploads_never_touch_the_disk(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import starlette.formparsers

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)  # ~3 MB PNG: above any 1 MB spool threshold
    data = encode(noisy, compress_level=0)
    assert len(data) > 3_000_000
    r = post_edit(client, "/eczema/add", data, mask_png(rect_mask(900, 1200, (400, 500, 450, 560))))
    assert r.status_code == 200, r.text
