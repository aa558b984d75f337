"""What a person looks at in a partition's metadata besides hashes: a small thumbnail of the
plate, and the preprocess tag split into its fields (the whole tag is one long line the UI clips).

Thumbnails are PNGs of at most :data:`THUMBNAIL_SIDE` pixels, palette-quantized (a few KB each in
the event log), inlined as a data URI in Markdown, which the Dagster UI renders. JPEG plates are
decoded at reduced DCT scale (``draft``), so one costs a few milliseconds; each is made once per
process per plate file.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

from awb_dagster.plates.catalog import PlateCatalog

THUMBNAIL_SIDE = 96
_PALETTE_COLORS = 64


@lru_cache(maxsize=8)
def _plate_paths(catalog: Path, mtime_ns: int) -> dict[str, Path]:
    """plate_id -> primary file, read once per version of the catalog (``mtime_ns`` keys the cache)."""
    return {plate_id: plate.path for plate_id, plate in PlateCatalog.load(catalog).plates.items()}


def plate_file(catalog: Path, plate_id: str) -> Path | None:
    """The primary file of ``plate_id`` in the catalog at ``catalog``, or None if unknown."""
    try:
        mtime_ns = catalog.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _plate_paths(catalog, mtime_ns).get(plate_id)


@lru_cache(maxsize=1024)
def thumbnail_png(path: Path, size_and_mtime: tuple[int, int]) -> bytes:
    """A palette PNG of ``path`` at most THUMBNAIL_SIDE pixels a side (``size_and_mtime`` keys the cache)."""
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))  # JPEG only; a no-op for others
        small = ImageOps.exif_transpose(image).convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.quantize(colors=_PALETTE_COLORS).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def thumbnail_markdown(catalog: Path, plate_id: str) -> str:
    """Markdown with the plate's thumbnail inline, or a sentence saying why there is none."""
    path = plate_file(catalog, plate_id)
    if path is None:
        return f"plate {plate_id} is not in the catalog {catalog}: no thumbnail"
    try:
        stat = path.stat()
        png = thumbnail_png(path, (stat.st_size, stat.st_mtime_ns))
    except (OSError, Image.DecompressionBombError) as exc:
        return f"no thumbnail: {path} cannot be read ({exc})"
    return f"![plate {plate_id}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def preprocess_fields(tag: str) -> tuple[dict[str, str], ...]:
    """``key=value;key=value`` as rows ``{"field", "value"}``, in the tag's order; a part without
    ``=`` is a value with an empty field name."""
    rows = []
    for part in tag.split(";"):
        key, sep, value = part.partition("=")
        rows.append({"field": key, "value": value} if sep else {"field": "", "value": part})
    return tuple(rows)
