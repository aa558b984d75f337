"""Partitions, defined once: plates are shared by every family, pins are per family
(embedding families and SAM alike: ``<family>_pins``)."""

from __future__ import annotations

import dagster as dg

from awb_dagster.constants import (
    EMBEDDING_FAMILIES,
    PIN_DIMENSION,
    PLATE_DIMENSION,
    PLATES_PARTITIONS_NAME,
    SAM_FAMILIES,
    SEGMENTATION_FAMILIES,
    SEMANTIC_FAMILIES,
)

plates_partitions = dg.DynamicPartitionsDefinition(name=PLATES_PARTITIONS_NAME)


def pins_partitions_name(family: str) -> str:
    return f"{family}_pins"


pins_partitions: dict[str, dg.DynamicPartitionsDefinition] = {
    family: dg.DynamicPartitionsDefinition(name=pins_partitions_name(family))
    for family in (*EMBEDDING_FAMILIES, *SEGMENTATION_FAMILIES, *SEMANTIC_FAMILIES)
}

# The registry families whose pins each pins partition lists: its own family, except that the
# SAM adapter also runs SAM-HQ, so SAM-HQ pins are keys of ``sam_pins`` (one sam_masks asset).
pins_partition_families: dict[str, tuple[str, ...]] = {
    partitions_def.name: SAM_FAMILIES if family == "sam" else (family,)
    for family, partitions_def in pins_partitions.items()
}


def plate_pin_partitions(family: str) -> dg.MultiPartitionsDefinition:
    """plate × pin. Dimensions sort by name, so keys read ``<pin>|<plate>``."""
    return dg.MultiPartitionsDefinition(
        {PLATE_DIMENSION: plates_partitions, PIN_DIMENSION: pins_partitions[family]}
    )


# Region embeddings. A segment key pairs one embedding pin with one SAM pin
# (``<embedding pin>~<sam pin>``), so a backfill per (embedding pin, SAM pin) over all plates is
# one key of this dimension × all plates. A tile key is an embedding pin.
segment_pins_partitions = dg.DynamicPartitionsDefinition(name="segment_pins")
tile_pins_partitions = dg.DynamicPartitionsDefinition(name="tile_pins")


def region_partitions(name: str) -> dg.MultiPartitionsDefinition:
    """plate × (segment or tile) pins; keys read ``<pins>|<plate>`` like the family assets."""
    pins = {"segment_pins": segment_pins_partitions, "tile_pins": tile_pins_partitions}[name]
    return dg.MultiPartitionsDefinition({PLATE_DIMENSION: plates_partitions, PIN_DIMENSION: pins})
