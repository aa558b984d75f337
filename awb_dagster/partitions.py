"""Partitions, defined once: plates are shared by every family, pins are per family
(embedding families and SAM alike: ``<family>_pins``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import dagster as dg

from awb_dagster.constants import (
    CAPTION_FAMILIES,
    EMBEDDING_FAMILIES,
    PIN_DIMENSION,
    PLATE_DIMENSION,
    PLATES_PARTITIONS_NAME,
    SAM_FAMILIES,
    SEGMENTATION_FAMILIES,
    SEMANTIC_FAMILIES,
    OCR_FAMILIES,
    TEXTURE_FAMILIES,
    PROBE_FAMILIES,
    DETECTION_FAMILIES,
    GROUNDING_FAMILIES,
    SCORE_FAMILIES,
    FOREGROUND_FAMILIES,
)

plates_partitions = dg.DynamicPartitionsDefinition(name=PLATES_PARTITIONS_NAME)


class PlatePinPartitions(dg.MultiPartitionsDefinition):
    """plate × pin, which answers the keys of a range once per set of dynamic keys.

    Dagster 1.13's ``add_asset_metadata(partition_key=...)`` resolves the step's whole range on
    every call to check the key: a single-run backfill over n plates builds n² multi-partition
    keys (about 3 ms a partition at 400 plates, 10k plates would take minutes). The answer
    depends only on the range and the two dimensions' current keys, so it is kept for the
    newest (range, keys) seen; any added or removed plate or pin makes a new entry."""

    def get_partition_keys_in_range(self, partition_key_range, dynamic_partitions_store=None):  # type: ignore[override]
        with dg.partition_loading_context(dynamic_partitions_store=dynamic_partitions_store) as context:
            store = context.dynamic_partitions_store
            if store is None:
                return super().get_partition_keys_in_range(partition_key_range)
            dimension_keys = tuple(
                tuple(store.get_dynamic_partitions(dimension.partitions_def.name)) for dimension in self.partitions_defs
            )
            cache_key = (partition_key_range.start, partition_key_range.end, dimension_keys)
            cached = self.__dict__.get("_awb_range")
            if cached is None or cached[0] != cache_key:
                cached = (cache_key, super().get_partition_keys_in_range(partition_key_range))
                self.__dict__["_awb_range"] = cached
            return cached[1]


def pins_partitions_name(family: str) -> str:
    return f"{family}_pins"


pins_partitions: dict[str, dg.DynamicPartitionsDefinition] = {
    family: dg.DynamicPartitionsDefinition(name=pins_partitions_name(family))
    for family in (*EMBEDDING_FAMILIES, *SEGMENTATION_FAMILIES, *SEMANTIC_FAMILIES, *OCR_FAMILIES, *TEXTURE_FAMILIES, *PROBE_FAMILIES, *DETECTION_FAMILIES, *GROUNDING_FAMILIES, *SCORE_FAMILIES, *CAPTION_FAMILIES, *FOREGROUND_FAMILIES)
}

# The registry families whose pins each pins partition lists: its own family, except that the
# SAM adapter also runs SAM-HQ, so SAM-HQ pins are keys of ``sam_pins`` (one sam_masks asset).
pins_partition_families: dict[str, tuple[str, ...]] = {
    partitions_def.name: SAM_FAMILIES if family == "sam" else (family,)
    for family, partitions_def in pins_partitions.items()
}


def plate_pin_partitions(family: str) -> dg.MultiPartitionsDefinition:
    """plate × pin. Dimensions sort by name, so keys read ``<pin>|<plate>``."""
    return PlatePinPartitions({PLATE_DIMENSION: plates_partitions, PIN_DIMENSION: pins_partitions[family]})


# Region embeddings. A segment key pairs one embedding pin with one SAM pin
# (``<embedding pin>~<sam pin>``), so a backfill per (embedding pin, SAM pin) over all plates is
# one key of this dimension × all plates. A tile key is an embedding pin.
segment_pins_partitions = dg.DynamicPartitionsDefinition(name="segment_pins")
tile_pins_partitions = dg.DynamicPartitionsDefinition(name="tile_pins")
# Box-prompted masks pair one detector pin with one SAM pin (``<detector pin>~<sam pin>``); segment
# keys over them read ``<embedding pin>~<detector pin>~<sam pin>``.
box_mask_pins_partitions = dg.DynamicPartitionsDefinition(name="box_mask_pins")
_PAIR_PINS = {p.name: p for p in (segment_pins_partitions, tile_pins_partitions, box_mask_pins_partitions)}


def region_partitions(name: str) -> dg.MultiPartitionsDefinition:
    """plate × (segment, tile or box-mask) pins; keys read ``<pins>|<plate>`` like the family assets."""
    pins = _PAIR_PINS[name]
    return PlatePinPartitions({PLATE_DIMENSION: plates_partitions, PIN_DIMENSION: pins})


def partitions_for(pins_dimension: str) -> dg.MultiPartitionsDefinition:
    """plate × the named pins dimension (``clip_pins``, ``sam_pins``, ``segment_pins``, ...)."""
    if pins_dimension in _PAIR_PINS:
        return region_partitions(pins_dimension)
    families = {partitions_def.name: family for family, partitions_def in pins_partitions.items()}
    if pins_dimension not in families:
        raise KeyError(f"no pins partitions named {pins_dimension!r} (known: {', '.join(sorted([*families, *_PAIR_PINS]))})")
    return plate_pin_partitions(families[pins_dimension])


def split_keys(partitions_def: dg.MultiPartitionsDefinition, keys: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Partition keys grouped by pin, as (partition key, plate id), in the order given."""
    by_pin: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        dims = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        by_pin[dims[PIN_DIMENSION]].append((key, dims[PLATE_DIMENSION]))
    return dict(by_pin)
