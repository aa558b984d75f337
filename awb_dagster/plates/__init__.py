"""Plates: the image corpus, its catalog and the color policy every model sees (no Dagster)."""

from awb_dagster.plates.catalog import (
    DEFAULT_MAX_PIXELS,
    SAMPLE_PLATES_DIR,
    CatalogError,
    Plate,
    PlateCatalog,
    ScanResult,
    plate_id_for,
)
from awb_dagster.plates.files import IMAGE_SUFFIXES, Rejection
from awb_dagster.plates.imaging import (
    COLOR_POLICY,
    COLOR_POLICY_DESCRIPTION,
    PlateError,
    decoder_tag,
    load_rgb,
)

__all__ = [
    "COLOR_POLICY",
    "COLOR_POLICY_DESCRIPTION",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "SAMPLE_PLATES_DIR",
    "CatalogError",
    "Plate",
    "PlateCatalog",
    "PlateError",
    "Rejection",
    "ScanResult",
    "decoder_tag",
    "load_rgb",
    "plate_id_for",
]
