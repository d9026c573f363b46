"""Fuzzing over real HTTP on loopback (issue 7): only 2xx/4xx, never a 5xx, and the server alive after.

1. schemathesis against the service's own OpenAPI document (GET /openapi.json): every operation,
   positive and negative generation, >= 1,000 cases in all (derandomized, so a failure reproduces).
2. A corpus of malformed and unusual files (truncated, empty, huge declared dimensions, real
   decompression bombs, wrong content types, image/mask mismatches, CMYK, 16-bit, palette with
   transparency, animated GIF/WebP/PNG, text named .png...) sent to every upload endpoint; each has
   the statuses it may get (200 for valid-but-unusual images), every 4xx carries a JSON error body.

The bad inputs test_http_endpoints.py already pins to one exact status are not repeated here.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image
from sample_images import encode, exif_bytes, gradient, mask_png, png_declaring, rect_mask

# ---- schemathesis ----------------------------------------------------------------------------

CASES_PER_OPERATION_AND_MODE = 135
MIN_CASES = 1000


def test_schemathesis_finds_no_server_error(server) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    statuses: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    failures: list[str] = []
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/generate", "/eczema/add", "/eczema/remove", "/eczema/segment",
                                              "/v1/models", "/healthz", "/readyz", "/metrics"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=CASES_PER_OPERATION_AND_MODE, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                      print_blob=False)
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=server.url, session=session, timeout=30)
                statuses[response.status_code] += 1
                per_operation[f"{op.method.upper()} {op.path}"] += 1
                if response.status_code >= 500 and len(failures) < 5:
                    failures.append(f"{response.status_code} {response.text[:300]}\n{case.as_curl_command()}")
                if 400 <= response.status_code < 500 and response.status_code != 405:
                    assert "error" in response.json(), response.text  # the documented error body

            try:
                check()
            except Unsatisfiable:  # negative mode of an operation with no inputs: nothing to break
                assert mode == GenerationMode.NEGATIVE and not op.body and not op.query, op.path
    print(f"schemathesis: {sum(statuses.values())} cases; by operation {dict(per_operation)}; by status {dict(statuses)}")
    assert not failures, "\n\n".join(failures)
    assert sum(statuses.values()) >= MIN_CASES, (per_operation, statuses)
    assert all(code < 500 for code in statuses), statuses
    assert len(per_operation) == len(operations), per_operation
    with server.client() as c:  # alive after
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.post("/generate", json={"kind": "hand", "seed": 1}).status_code == 200


# ---- a corpus of malformed and unusual files --------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(w: int, h: int, bit_depth: int, colour_type: int, idat: bytes, *extra: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A *valid* greyscale PNG of side x side zeros: tiny file, side^2 bytes once inflated."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return _png(side, side, 8, 0, data)


def png_text_bomb() -> bytes:
    """A small valid PNG whose zTXt chunk inflates to 16 MB."""
    z = zlib.compressobj(9)
    text = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(16)) + z.flush()
    raw = b"".join(b"\x00" + bytes(range(8)) * 3 for _ in range(8))
    return _png(8, 8, 8, 2, zlib.compress(raw), _chunk(b"zTXt", b"Comment\x00\x00" + text))


def png16_rgb(h: int, w: int) -> bytes:
    """16 bits per channel RGB (Pillow cannot write it; written by hand)."""
    rgb = gradient(h, w).astype(">u2") * 257
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    return _png(w, h, 16, 2, zlib.compress(raw))


def jpeg_declaring(w: int, h: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to declare w x h."""
    data = bytearray(encode(gradient(16, 16), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def webp_declaring(w: int, h: int) -> bytes:
    """An extended (VP8X) WebP header declaring w x h, then a tiny lossless frame."""
    frame = encode(gradient(4, 4), "WEBP", lossless=True)[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def frames(fmt: str, **save: object) -> bytes:
    imgs = [Image.fromarray(np.roll(gradient(24, 32), 5 * i, axis=1)) for i in range(3)]
    if fmt == "GIF":
        imgs = [im.convert("P") for im in imgs]
    buf = io.BytesIO()
    imgs[0].save(buf, format=fmt, save_all=True, append_images=imgs[1:], duration=50, loop=0, **save)
    return buf.getvalue()


def mode(arr: np.ndarray, m: str, fmt: str = "PNG", **save: object) -> bytes:
    return encode(arr, fmt, mode=m, **save)


def palette_with_transparency() -> bytes:
    img = Image.fromarray(gradient(24, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=3)
    return buf.getvalue()


def bad_crc(png: bytes) -> bytes:
    data = bytearray(png)
    i = data.index(b"IDAT") + 4
    data[i] ^= 0xFF  # corrupt the first compressed byte; the CRC no longer matches
    return bytes(data)


G = gradient(24, 32)
PNG, JPEG = encode(G), encode(G, "JPEG", quality=90)
WEBP = encode(G, "WEBP", quality=80)
HEIC = encode(G, "HEIF", quality=80)  # pillow-heif, a dependency


def heic_bit_flips(seed: int) -> bytes:
    data = bytearray(HEIC)
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, len(data), 6):
        data[i] = int(rng.integers(0, 256))
    return bytes(data)


MASK = mask_png(rect_mask(24, 32, (6, 8, 18, 24)))
OK, TOO_BIG, BAD, INVALID = {200}, {413}, {415}, {422}

# (name, image, mask or None, statuses allowed with the mask, statuses allowed without one)
CORPUS: list[tuple[str, bytes, bytes | None, set[int]]] = [
    ("zero bytes", b"", MASK, BAD),
    ("PNG signature only", PNG[:8], MASK, BAD),
    ("PNG header only", PNG[:33], MASK, BAD),
    ("PNG cut in IDAT", PNG[: len(PNG) * 2 // 3], MASK, BAD),
    ("PNG without IEND", PNG[:-12], MASK, OK | BAD),
    ("PNG with a bad CRC", bad_crc(PNG), MASK, BAD),
    ("PNG of 0 x 24", _png(0, 24, 8, 0, zlib.compress(b"")), MASK, BAD),
    ("PNG declaring 65535 x 65535", png_declaring(65535, 65535), MASK, TOO_BIG),
    ("PNG bomb 5000 x 5000 (real data, 25 MB inflated)", png_bomb(5000), MASK, TOO_BIG),
    ("PNG with a 16 MB zTXt", png_text_bomb(), None, OK | BAD | TOO_BIG),
    ("JPEG SOI only", JPEG[:2], MASK, BAD),
    ("JPEG cut in half", JPEG[: len(JPEG) // 2], MASK, OK | BAD),
    ("JPEG declaring 65000 x 65000", jpeg_declaring(65000, 65000), MASK, TOO_BIG | BAD),
    ("WebP cut in half", WEBP[: len(WEBP) // 2], MASK, BAD),
    ("WebP declaring 16383 x 16383", webp_declaring(16383, 16383), MASK, TOO_BIG | BAD),
    ("HEIC", HEIC, MASK, OK),
    ("HEIC header only", HEIC[:40], MASK, BAD),
    ("HEIC cut in half", HEIC[: len(HEIC) // 2], MASK, OK | BAD),
    *((f"HEIC with flipped bytes {i}", heic_bit_flips(i), MASK, OK | BAD) for i in range(4)),
    ("CMYK JPEG", mode(G, "CMYK", "JPEG"), MASK, OK),
    ("progressive JPEG", encode(G, "JPEG", progressive=True), MASK, OK),
    ("EXIF orientation 9 (invalid)", encode(G, "JPEG", exif=exif_bytes(9)), MASK, OK),
    ("EXIF garbage", encode(G, "JPEG", exif=b"Exif\x00\x00garbage-not-tiff"), MASK, OK),
    ("16-bit greyscale PNG", encode((gradient(24, 32)[..., 0].astype(np.uint16) * 257)), MASK, OK),
    ("16-bit RGB PNG", png16_rgb(24, 32), MASK, OK),
    ("palette PNG with transparency", palette_with_transparency(), MASK, OK),
    ("greyscale + alpha PNG", mode(G, "LA"), MASK, OK),
    ("1-bit PNG", mode(G, "1"), MASK, OK),
    ("1 x 1 PNG", encode(gradient(1, 1)), mask_png(np.ones((1, 1), bool)), OK),
    ("animated PNG", frames("PNG"), MASK, OK),
    ("animated WebP", frames("WEBP", lossless=True), MASK, OK | BAD),
    ("animated GIF", frames("GIF"), MASK, BAD),
    ("BMP", encode(G, "BMP"), MASK, BAD),
    ("TIFF", encode(G, "TIFF"), MASK, BAD),
    ("ICO", encode(G, "ICO"), MASK, BAD),
    ("text named .png", b"just some text, not an image\n" * 10, MASK, BAD),
    ("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="32"/>', MASK, BAD),
    ("HTML", b"<!doctype html><html><body>hi</body></html>", MASK, BAD),
    ("JSON", b'{"image": "data:image/png;base64,AAAA"}', MASK, BAD),
    ("mask larger than the image", PNG, mask_png(np.ones((48, 64), bool)), INVALID),
    ("mask smaller than the image", PNG, mask_png(np.ones((23, 32), bool)), INVALID),
    ("mask fully transparent", PNG, encode(np.zeros((24, 32, 4), np.uint8) + np.array([255, 255, 255, 0], np.uint8)), INVALID),
    ("mask as 16-bit PNG", PNG, encode(rect_mask(24, 32, (2, 2, 9, 9)).astype(np.uint16) * 65535), OK),
    ("mask as palette PNG", PNG, mode(np.dstack([rect_mask(24, 32, (2, 2, 9, 9)).astype(np.uint8) * 255] * 3), "P"), OK),
    ("mask as JPEG", PNG, encode(np.dstack([rect_mask(24, 32, (2, 2, 9, 9)).astype(np.uint8) * 255] * 3), "JPEG"), OK),
    ("mask truncated", PNG, MASK[: len(MASK) // 2], BAD),
    ("mask a bomb", PNG, png_bomb(5000), TOO_BIG | INVALID),
    ("mask animated GIF", PNG, frames("GIF"), BAD),
]


def _post(client: httpx.Client, path: str, files: dict[str, tuple[str, bytes, str]]) -> httpx.Response:
    return client.post(path, files=files)


@pytest.mark.parametrize("name,image,mask,allowed", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_and_unusual_files(server, name: str, image: bytes, mask: bytes | None, allowed: set[int]) -> None:
    image_only = not any(w in name for w in ("mask", "1 x 1"))  # cases about the image, not the mask
    with server.client() as c:
        calls = [("/eczema/add", {"image": ("image.png", image, "image/png")}
                  | ({"mask": ("mask.png", mask, "image/png")} if mask is not None else {}), allowed)]
        if image_only:
            no_mask = allowed - INVALID if allowed - INVALID else allowed
            calls += [("/eczema/remove", {"image": ("image.png", image, "image/png")}, no_mask),
                      ("/eczema/segment", {"image": ("image.png", image, "image/png")}, no_mask)]
        for path, files, ok in calls:
            r = _post(c, path, files)
            assert r.status_code < 500, f"{path}: {r.status_code} {r.text[:500]}"
            assert r.status_code in ok, f"{path}: {r.status_code} not in {sorted(ok)}: {r.text[:500]}"
            if r.status_code == 200:
                assert r.headers["content-type"] == "image/png"
                Image.open(io.BytesIO(r.content)).load()
            else:
                body = r.json()
                assert body["error"] and body["detail"], body
        assert c.get("/healthz").status_code == 200


RAW_BODIES = [
    ("multipart without a boundary", b"--x\r\n", "multipart/form-data", 422),
    ("boundary that never appears", b"--a\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nxx\r\n--a--\r\n",
     "multipart/form-data; boundary=zzz", 422),
    ("part without a name", b"--b\r\nContent-Disposition: form-data\r\n\r\nxx\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 422),
    ("image twice", b"".join(b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i\"\r\n\r\n" + PNG + b"\r\n"
                             for _ in range(2)) + b"--b--\r\n", "multipart/form-data; boundary=b", 422),
    ("nine parts", b"".join(f"--b\r\nContent-Disposition: form-data; name=\"p{i}\"\r\n\r\nx\r\n".encode() for i in range(9))
     + b"--b--\r\n", "multipart/form-data; boundary=b", 422),
    ("unterminated body", b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n" + PNG[:40],
     "multipart/form-data; boundary=b", 422),
    ("PNG as the raw body", PNG, "image/png", 415),
    ("no content type", PNG, "", 415),
]


@pytest.mark.parametrize("name,body,ctype,status", RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
def test_malformed_bodies(server, name: str, body: bytes, ctype: str, status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with server.client() as c:
        for path in ("/eczema/add", "/eczema/segment"):
            r = c.post(path, content=body, headers={"content-type": ctype} if ctype else {})
            assert r.status_code < 500, f"{path}: {r.status_code} {r.text[:300]}"
            assert r.status_code in (status, 415, 422), f"{path}: {r.status_code} {r.text[:300]}"
            assert r.json()["error"], r.text
        assert c.get("/healthz").status_code == 200
    # each is answered with its 422 / 415 (and an access line); no library line per bad request
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")], caplog.records
