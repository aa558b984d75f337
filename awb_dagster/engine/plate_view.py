"""What a person looks at in a partition's metadata besides hashes: a small thumbnail of the
plate, and the preprocess tag split into its fields (the whole tag is one long line the UI clips).

Thumbnails (awb_dagster/plates/thumbnails.py: palette PNGs of at most 96 pixels, a few KB each in
the event log) are inlined as a data URI in Markdown, which the Dagster UI renders. The catalog
scan leaves one per plate bytes beside the catalog; a plate scanned before that gets one here,
once.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from PIL import Image

from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.plates.thumbnails import keep_thumbnail, thumbnail_path, thumbnail_png

@lru_cache(maxsize=8)
def _plate_files(catalog: Path, mtime_ns: int) -> dict[str, tuple[Path, str]]:
    """plate_id -> (primary file, sha256), read once per version of the catalog (``mtime_ns`` keys the cache)."""
    return {plate_id: (plate.path, plate.sha256) for plate_id, plate in PlateCatalog.load(catalog).plates.items()}


def plate_file(catalog: Path, plate_id: str) -> tuple[Path, str] | None:
    """The primary file of ``plate_id`` in the catalog at ``catalog`` and its sha256, or None if unknown."""
    try:
        mtime_ns = catalog.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _plate_files(catalog, mtime_ns).get(plate_id)


def thumbnail_markdown(catalog: Path, plate_id: str) -> str:
    """Markdown with the plate's thumbnail inline, or a sentence saying why there is none."""
    found = plate_file(catalog, plate_id)
    if found is None:
        return f"plate {plate_id} is not in the catalog {catalog}: no thumbnail"
    path, sha256 = found
    kept = thumbnail_path(catalog, sha256)
    if kept.is_file():
        png = kept.read_bytes()
    else:
        try:
            with Image.open(path) as image:
                png = thumbnail_png(image)
        except (OSError, Image.DecompressionBombError) as exc:
            return f"no thumbnail: {path} cannot be read ({exc})"
        keep_thumbnail(kept, png)
    return f"![plate {plate_id}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def preprocess_fields(tag: str) -> tuple[dict[str, str], ...]:
    """``key=value;key=value`` as rows ``{"field", "value"}``, in the tag's order; a part without
    ``=`` is a value with an empty field name."""
    rows = []
    for part in tag.split(";"):
        key, sep, value = part.partition("=")
        rows.append({"field": key, "value": value} if sep else {"field": "", "value": part})
    return tuple(rows)
