"""Region embeddings (seed 8.2), what segments and tiles share: a plate is decoded at full
resolution and cut into regions in a decode thread, each cut goes through the embedder's own
processor, and the plate's records go to one Parquet artifact of the pin pair's sealed run.
The region policy (and, for segments, the mask set) is appended to the embedder's tag."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awb_dagster.constants import EMBEDDING_FAMILIES
from awb_dagster.engine.producer import PlateOutput
from awb_dagster.instruments.embedding import ADAPTER_VERSION as EMBEDDING_ADAPTER_VERSION
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.regions import REGIONS_VERSION
from awb_dagster.plates.catalog import Plate
from awb_dagster.producers.embeddings import embedding_row
from awb_dagster.provenance.checks import CheckOutcome, check_embedding_pairs
from awb_dagster.provenance.records import embedding_table
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

CODE_VERSION = f"{EMBEDDING_ADAPTER_VERSION}+{REGIONS_VERSION}"


@dataclass(frozen=True)
class Region:
    """One region of a plate, cut and prepared for the embedder."""

    ref: str
    prepared: torch.Tensor


@dataclass(frozen=True)
class PlateRegions:
    """A plate's regions plus what the partition metadata reports about them."""

    plate: Plate
    tag: str  # the full preprocess tag of these records
    regions: list[Region]
    facts: dict[str, Any]


def region_embedder(instruments: Any, embedding_pin: str) -> ImageEmbedder:
    """The embedder of a region key's embedding pin, at full resolution (no JPEG draft)."""
    family = instruments.family_of(embedding_pin)
    if family not in EMBEDDING_FAMILIES:
        raise InstrumentError(
            f"pin {embedding_pin} is a {family} model, not an image embedder ({', '.join(EMBEDDING_FAMILIES)})"
        )
    return instruments.embedder(embedding_pin, family, jpeg_draft=False)


class RegionSession:
    """One pin pair of a region asset: ``cut`` turns a plate into its prepared regions."""

    batch_size = 1  # one plate per slot: its regions are cut while the model embeds the last plate's
    code_version = CODE_VERSION

    def __init__(
        self,
        embedder: ImageEmbedder,
        *,
        scope: str,
        store_key: str,
        cut: Callable[[Plate], PlateRegions],
        expected_tag: Callable[[Plate], str | None],
        config: dict[str, Any],
        torch_settings: Any,
    ):
        self.instrument = embedder
        self.scope = scope
        self.store_key = store_key
        self.run_kind = f"{embedder.instrument.family}-{scope}-embeddings"
        self._cut = cut
        self._expected_tag = expected_tag
        self._config = {**config, "batch_size": torch_settings.batch_size, "pair_key": store_key}
        self._embed_batch = torch_settings.batch_size

    def run_config(self) -> dict[str, Any]:
        return self._config

    def expected_tag(self, plate: Plate) -> str | None:
        return self._expected_tag(plate)

    def prepare(self, plate: Plate) -> PlateRegions:
        return self._cut(plate)

    def process(self, batch: Sequence[tuple[Plate, PlateRegions]], run: OpenRun) -> list[PlateOutput]:
        outputs = []
        for plate, cut in batch:
            vectors = self._vectors(cut.regions)
            rows = [
                embedding_row(self.instrument, plate, tag=cut.tag, run_id=run.run_id, scope=self.scope, region=r.ref)
                for r in cut.regions
            ]
            artifact = run.write_table(f"{self.scope}s", embedding_table(rows, vectors))
            facts = {**cut.facts, "records": len(rows)}
            outputs.append(PlateOutput(plate, cut.tag, [row["record_id"] for row in rows], artifact, facts))
        return outputs

    def _vectors(self, regions: list[Region]) -> np.ndarray:
        embedder = self.instrument
        if not regions:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        size = self._embed_batch
        chunks = [
            embedder.embed(embedder.pixel_values([r.prepared for r in regions[i : i + size]]))
            for i in range(0, len(regions), size)
        ]
        return np.concatenate(chunks)

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"pair": pair.pin_key, "vector_dim": self.instrument.dim}
        for key, value in (facts or {}).items():
            if key != "records":  # the engine reports the record count
                metadata[key] = Path(value) if key == "mask_artifact" else value
        return metadata


def embedding_outcomes(store: RunStore, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]) -> dict[str, CheckOutcome]:
    """The five embedding checks over region records (dims as each session's embedder outputs)."""
    dims = {session.store_key: session.instrument.dim for session in sessions.values()}
    return check_embedding_pairs(store, pairs, declared_dims=dims)
