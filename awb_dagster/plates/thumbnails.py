"""Plate thumbnails: small palette PNGs kept beside the catalog by plate sha256, so the UI can
show each plate without decoding the scan again.

A thumbnail is made when the catalog scan has the image decoded anyway (``awb plates add``,
the plate sensor); a plate registered before thumbnails existed gets one at first use. Decoding
a 5-megapixel scan costs ~10 ms even at 1/8 DCT scale, so each plate's bytes pay it at most once.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps

from awb_dagster.plates.imaging import to_rgb

THUMBNAIL_SIDE = 96
THUMBNAILS_DIR = "thumbnails"  # beside catalog.json
_PALETTE_COLORS = 64


def thumbnail_path(catalog: Path, sha256: str) -> Path:
    """Where the thumbnail of the plate bytes ``sha256`` is kept for the catalog at ``catalog``."""
    return catalog.parent / THUMBNAILS_DIR / f"{sha256}.png"


def thumbnail_png(image: Image.Image) -> bytes:
    """A palette PNG of the (opened or decoded) ``image``, EXIF orientation applied and colors by
    the plate color policy (rgb-v1: alpha over white, 16-bit scaled), at most THUMBNAIL_SIDE
    pixels a side."""
    image.draft(image.mode, (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))  # JPEG not yet decoded only; else a no-op
    small = to_rgb(ImageOps.exif_transpose(image))
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.quantize(colors=_PALETTE_COLORS).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def keep_thumbnail(target: Path, png: bytes) -> None:
    """Write a thumbnail atomically (another process may be writing the same one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_bytes(png)
    partial.chmod(0o644)
    os.replace(partial, target)
