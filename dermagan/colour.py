"""Colour management shared by the service and the training loaders: everything works in 8-bit sRGB.

The service's answers carry no ICC profile (no metadata of the input), so they are sRGB; a phone's
Display P3 photograph returned as its raw numbers would look washed out -- eczema's redness duller.
The training loaders convert the same way, so a model sees a photograph's colours as it is served them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

_SRGB = ImageCms.createProfile("sRGB")

#: Colour spaces of an embedded ICC profile -> the image modes it can describe.
_ICC_MODES = {"RGB": ("RGB", "RGBA"), "CMYK": ("CMYK",), "GRAY": ("L",)}


def source_profile(img: Image.Image) -> ImageCms.ImageCmsProfile | None:
    """The embedded ICC profile `to_srgb` converts from, read from the header alone (nothing decoded):
    None when the image's numbers are taken as sRGB as they are -- no profile, an sRGB one, or one that
    cannot be read or does not fit the mode."""
    icc = img.info.get("icc_profile")
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
        space = profile.profile.xcolor_space.strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return None
    if "srgb" in description.lower() or img.mode not in _ICC_MODES.get(space, ()):
        return None
    return profile


def to_srgb(img: Image.Image) -> Image.Image:
    """An image whose embedded ICC profile is not sRGB, converted to sRGB (relative colorimetric, as
    browsers show it). Images without a profile, with an sRGB one, or with one that cannot be read or
    does not fit the mode stay as they are (their numbers are taken as sRGB, as a browser takes them)."""
    profile = source_profile(img)
    if profile is None:
        return img
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    source = img.convert("RGB") if alpha is not None else img
    try:
        out = ImageCms.profileToProfile(source, profile, _SRGB, outputMode="RGB",
                                        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (OSError, ValueError, ImageCms.PyCMSError):
        return img
    assert out is not None
    if alpha is not None:
        out.putalpha(alpha)
    return out


def is_wide(img: Image.Image) -> bool:
    """Whether `img` holds grey values wider than 8 bits (16-bit PNGs and TIFFs: I;16*, 32-bit I and F)."""
    return img.mode.startswith("I") or img.mode == "F"


def to_eight_bits(img: Image.Image) -> Image.Image:
    """A wide grey image (`is_wide`) scaled to 8 bits ("L") by its top 8 bits, clipped to 0..65535: Pillow's
    convert() clips every value over 255 to white instead. Its transparent grey level (a PNG's tRNS, a 16-bit
    value) becomes an alpha channel ("LA"), compared before the scaling: 256 levels share each 8-bit one."""
    arr = np.asarray(img).astype(np.int64)
    grey = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(arr == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, alpha]), "LA")
    return Image.fromarray(grey, "L")
