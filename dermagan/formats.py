"""Image formats beyond Pillow's own, for the service's uploads and the training loaders alike.

HEIF / HEIC -- the format an iPhone takes photographs in -- through pillow-heif (libheif), registered
with Pillow when this module is imported. pillow-heif applies the file's rotation and mirroring as it
decodes (its EXIF orientation then reads 1) and hands over the embedded ICC profile, so the rest of
the pipeline (EXIF transpose, sRGB conversion) treats a HEIC like a JPEG.
"""

from __future__ import annotations


def _register_heif() -> bool:
    try:
        import pillow_heif
    except ImportError:  # an install without it reads PNG, JPEG and WebP only
        return False
    pillow_heif.register_heif_opener()
    return True


#: Whether Pillow opens HEIF / HEIC files (format name "HEIF") in this process.
HEIF = _register_heif()
