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
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

from awb_dagster.plates.catalog import PlateCatalog

THUMBNAIL_SIDE = 96
_PALETTE_COLORS = 64


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


def thumbnail_path(catalog: Path, sha256: str) -> Path:
    """Where a plate's thumbnail is kept: beside the catalog, by the plate bytes' sha256. Decoding a
    5-megapixel scan costs ~10 ms even at 1/8 DCT scale, so each plate's bytes pay it once, not at
    every materialization that shows the plate."""
    return catalog.parent / "thumbnails" / f"{sha256}.png"


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
    found = plate_file(catalog, plate_id)
    if found is None:
        return f"plate {plate_id} is not in the catalog {catalog}: no thumbnail"
    path, sha256 = found
    kept = thumbnail_path(catalog, sha256)
    if kept.is_file():
        png = kept.read_bytes()
    else:
        try:
            stat = path.stat()
            png = thumbnail_png(path, (stat.st_size, stat.st_mtime_ns))
        except (OSError, Image.DecompressionBombError) as exc:
            return f"no thumbnail: {path} cannot be read ({exc})"
        _keep(kept, png)
    return f"![plate {plate_id}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _keep(target: Path, png: bytes) -> None:
    """Write the thumbnail atomically (another process may be writing the same one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_bytes(png)
    partial.chmod(0o644)
    os.replace(partial, target)


def preprocess_fields(tag: str) -> tuple[dict[str, str], ...]:
    """``key=value;key=value`` as rows ``{"field", "value"}``, in the tag's order; a part without
    ``=`` is a value with an empty field name."""
    rows = []
    for part in tag.split(";"):
        key, sep, value = part.partition("=")
        rows.append({"field": key, "value": value} if sep else {"field": "", "value": part})
    return tuple(rows)
