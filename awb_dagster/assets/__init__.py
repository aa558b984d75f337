"""Dagster assets: the plate catalog and one asset per model family."""

from awb_dagster.assets.clip import clip_embeddings
from awb_dagster.assets.dinov2 import dinov2_embeddings
from awb_dagster.assets.plates import observe_plate_files_job, plate_and_pin_sensor, plate_catalog, plate_files
from awb_dagster.assets.siglip import siglip_embeddings

EMBEDDING_ASSETS = (clip_embeddings, siglip_embeddings, dinov2_embeddings)

__all__ = [
    "EMBEDDING_ASSETS",
    "clip_embeddings",
    "dinov2_embeddings",
    "plate_and_pin_sensor",
    "observe_plate_files_job",
    "plate_catalog",
    "plate_files",
    "siglip_embeddings",
]
