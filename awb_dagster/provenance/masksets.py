"""The sealed SAM mask sets of one SAM pin (or of one ``<detector pin>~<SAM pin>`` box-mask pair),
indexed once per step: which set a plate's segments are cut from, and its rows once the artifact's
bytes match its sealed manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from awb_dagster.instruments.regions import RegionError
from awb_dagster.plates.catalog import Plate
from awb_dagster.provenance.records import REGION_PAIR_SEPARATOR
from awb_dagster.provenance.store import RunStore, SealedPair, verified_path

MASK_COLUMNS = ["record_id", "rle_counts", "rle_size", "bbox", "area"]


@dataclass(frozen=True)
class MaskSet:
    """The sealed SAM masks of one plate under one SAM pin and tag."""

    pair: SealedPair
    rows: list[dict[str, Any]]


class MaskSets:
    """``sam_tag`` chooses the set (empty: each plate's newest sealed set under the SAM pin)."""

    def __init__(self, store: RunStore, sam_pin: str, sam_tag: str):
        self.store, self.sam_pin, self.sam_tag = store, sam_pin, sam_tag
        self._pairs: dict[tuple[str, str], list[SealedPair]] = {}
        for (plate_id, sha, tag), pair in store.sealed_pairs(sam_pin).items():
            if not sam_tag or tag == sam_tag:
                self._pairs.setdefault((plate_id, sha), []).append(pair)

    def pair(self, plate: Plate) -> SealedPair:
        """The mask set the plate's segments are cut from (no file is read)."""
        pairs = self._pairs.get((plate.plate_id, plate.sha256))
        if not pairs:
            which = f" under preprocess tag {self.sam_tag!r}" if self.sam_tag else ""
            asset, pins = ("box_masks", "box-mask pins") if REGION_PAIR_SEPARATOR in self.sam_pin else ("sam_masks", "SAM pin")
            raise RegionError(
                f"no sealed {asset} for plate {plate.plate_id} (sha256 {plate.sha256[:12]}) and {pins} "
                f"{self.sam_pin}{which}; materialize {asset} for partition {self.sam_pin}|{plate.plate_id} first"
            )
        return max(pairs, key=lambda p: p.run_id)  # run ids start with their UTC start time

    def load(self, plate: Plate) -> MaskSet:
        pair = self.pair(plate)
        path = verified_path(self.store, pair.run_id, pair.artifact, pair.artifact_sha256)
        return MaskSet(pair, pq.read_table(path, columns=MASK_COLUMNS).to_pylist())


def mask_set(store: RunStore, sam_pin: str, plate: Plate, sam_tag: str) -> MaskSet:
    """The plate's sealed masks under ``sam_pin`` (``sam_tag`` empty: the newest set)."""
    return MaskSets(store, sam_pin, sam_tag).load(plate)
