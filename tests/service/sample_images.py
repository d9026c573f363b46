"""Tiny deterministic test images as bytes (PNG/JPEG/WebP, with or without metadata), and the
multipart body that uploads an image (+ mask) the way a client does."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

ICC_SRGB_STUB = b"\x00" * 128 + b"dermagan-test-icc"  # any bytes: decoders keep it as the icc_profile


def gradient(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3), smooth and asymmetric (so orientation errors show)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + 2 * y) % 256]).astype(np.uint8)


def rect_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    t, l, b, r = box
    m[t:b, l:r] = True
    return m


def encode(arr: np.ndarray, fmt: str = "PNG", *, mode: str | None = None, **save: object) -> bytes:
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    return encode(mask.astype(np.uint8) * 255)


def exif_bytes(orientation: int = 1, *, gps: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "dermagan-test-camera"  # Make
    if gps:
        exif[0x8825] = {1: "N", 2: (47.0, 22.0, 0.0)}  # GPSInfo
    return exif.tobytes()


def png_with_metadata(arr: np.ndarray) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "patient: Jane Doe")
    info.add_itxt("Description", "secret clinic note")
    return encode(arr, "PNG", pnginfo=info, icc_profile=ICC_SRGB_STUB, exif=exif_bytes(1, gps=True))


def png_chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, types = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        types.append(data[pos + 4:pos + 8].decode("latin-1"))
        pos += 12 + length
    return types


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(w: int, h: int) -> bytes:
    """A tiny PNG whose header declares w x h pixels (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def png_raw(samples: np.ndarray, bits: int, colour_type: int, *, before: bytes = b"", after: bytes = b"") -> bytes:
    """A PNG written chunk by chunk, for what Pillow does not write: `samples` (h, w, channels) as `bits`-bit
    samples (1, 2 and 4 packed into bytes, 16 big-endian) of PNG colour type `colour_type` (0 grey, 2 RGB,
    6 RGBA), with the chunks `before` ahead of IDAT and `after` behind it."""
    h, w, c = samples.shape
    if bits < 8:
        per = 8 // bits
        padded = np.zeros((h, -(-w // per) * per), np.uint8)
        padded[:, :w] = samples[..., 0]
        shifts = np.arange(per - 1, -1, -1) * bits
        rows = (padded.reshape(h, -1, per) << shifts).sum(axis=2).astype(np.uint8)
    else:
        rows = samples.astype(">u2" if bits == 16 else np.uint8).reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before + png_chunk(b"IDAT", zlib.compress(raw))
            + after + png_chunk(b"IEND", b""))


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def multipart_images(image: bytes, mask: bytes | None = None, boundary: str = "dermagan-test") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of `image` (+ `mask`), both as PNG parts."""
    parts = [("image", image)] + ([("mask", mask)] if mask is not None else [])
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{n}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + d + b"\r\n" for n, d in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def display_p3_icc(description: str = "dermagan test Display P3") -> bytes:
    """A minimal ICC v2 matrix/TRC display profile with Display P3's primaries (D50-adapted colorants, as
    ICC stores them) and a gamma-2.2 curve: what a phone's photographs embed, for the colour tests
    (no ICC file can be downloaded here; littleCMS reads this one)."""
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"cprt", b"text" + b"\0" * 4 + b"public domain\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)), (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)),
            (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 12, 4, 0, 0, 0) + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + table + data
