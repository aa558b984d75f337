"""CLIP-fed aesthetic scores (seed 7.1): one score per plate × aesthetic MLP pin, asset
``aesthetic_scores``, read from the sealed ``clip_embeddings`` records of the CLIP model the MLP
was trained on (never recomputed). ``embedding_ref`` is the scored embedding record, so lineage
runs score -> embedding -> CLIP pin -> plate. A missing CLIP pin fails the step naming the model to
pin; a plate without a sealed embedding of that pin fails its partition naming the pin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from awb_dagster.constants import GROUP_PROBES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.instruments.aesthetic_mlp import ADAPTER_VERSION, AestheticMlp
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.probes import SCORE_CHECK_DESCRIPTIONS, check_score_pairs, score_table
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair, verified_path

FAMILY = "aesthetic"


@dataclass(frozen=True)
class AestheticSettings:
    """No settings: the input is the sealed CLIP embedding, the MLP is the pinned file."""


@dataclass(frozen=True)
class UpstreamEmbedding:
    record_id: str
    preprocess_tag: str
    vector_l2: np.ndarray


class AestheticSession:
    def __init__(self, mlp: AestheticMlp, clip_pin: str, store: RunStore, batch_size: int):
        self.instrument = mlp
        self.store_key = mlp.pin.key
        self.run_kind = "aesthetic-scores"
        self.code_version = ADAPTER_VERSION
        self.batch_size = batch_size
        self.clip_pin = clip_pin
        self._store = store
        newest: dict[tuple[str, str], SealedPair] = {}
        for pair in sorted(store.sealed_pairs(clip_pin).values(), key=lambda p: p.run_id):
            newest[(pair.plate_id, pair.plate_sha256)] = pair  # the newest sealed embedding per plate
        self._embeddings = newest

    def run_config(self) -> dict[str, Any]:
        return {"clip_pin": self.clip_pin, "clip_model": self.instrument.spec.clip_model}

    def _pair(self, plate: Plate) -> SealedPair | None:
        return self._embeddings.get((plate.plate_id, plate.sha256))

    def expected_tag(self, plate: Plate) -> str | None:
        pair = self._pair(plate)
        return None if pair is None else self.instrument.tag_for(self.clip_pin, pair.preprocess_tag)

    def prepare(self, plate: Plate) -> UpstreamEmbedding:
        pair = self._pair(plate)
        if pair is None:
            raise InstrumentError(
                f"plate {plate.plate_id} has no sealed clip_embeddings record of pin {self.clip_pin} "
                f"({self.instrument.spec.clip_model}, the CLIP {self.instrument.instrument.id} was trained on); "
                f"materialize clip_embeddings for {self.clip_pin} on it first"
            )
        path = verified_path(self._store, pair.run_id, pair.artifact, pair.artifact_sha256)
        table = pq.read_table(path, columns=["record_id", "vector_l2"], filters=[("record_id", "=", pair.record_ids[0])])
        vector = np.asarray(table.column("vector_l2")[0].as_py(), dtype=np.float32)
        return UpstreamEmbedding(pair.record_ids[0], pair.preprocess_tag, vector)

    def process(self, batch: Sequence[tuple[Plate, UpstreamEmbedding]], run: OpenRun) -> list[PlateOutput]:
        mlp = self.instrument
        scores = mlp.scores(np.stack([upstream.vector_l2 for _, upstream in batch]))
        rows, tags = [], []
        for plate, upstream in batch:
            tag = mlp.tag_for(self.clip_pin, upstream.preprocess_tag)
            fields = record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=mlp.instrument.id, model_sha=mlp.pin.sha,
                pin_key=mlp.pin.key, preprocess_tag=tag, run_id=run.run_id, scope="plate",
            )  # fmt: skip
            rows.append({**fields, "embedding_ref": upstream.record_id, "embedding_pin": self.clip_pin,
                         "calibration": mlp.spec.calibration})  # fmt: skip
            tags.append(tag)
        artifact = run.write_table("scores", score_table(rows, scores))
        return [
            PlateOutput(plate, tag, [row["record_id"]], artifact, facts={"score": float(score)})
            for (plate, _), tag, row, score in zip(batch, tags, rows, scores)
        ]

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "clip_pin": self.clip_pin,
            "calibration": self.instrument.spec.calibration,
            "intended_use": self.instrument.instrument.intended_use or "",
        }
        if facts:
            metadata["score"] = round(facts["score"], 6)
        return metadata


class AestheticProducer:
    """The CLIP-fed aesthetic MLPs: asset ``aesthetic_scores``, reading ``clip_embeddings``."""

    asset_name = "aesthetic_scores"
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_PROBES
    description = (
        "Aesthetic score (seed 7.1) per plate × aesthetic MLP pin, from the sealed clip_embeddings record of the "
        "CLIP it was trained on (vector_l2; never recomputed). A sorting heuristic and pipeline fingerprint: a "
        "measured axis, never a verdict on a plate."
    )
    code_version = ADAPTER_VERSION
    settings_type = AestheticSettings
    check_descriptions = SCORE_CHECK_DESCRIPTIONS
    upstream = ("clip_embeddings",)
    license_gated = True
    family = FAMILY

    def open(self, pin_key: str, settings: AestheticSettings, inputs: StepInputs) -> AestheticSession:
        mlp = inputs.instruments.aesthetic_mlp(pin_key)
        clip_model = mlp.spec.clip_model
        registry = inputs.instruments.home.registry()
        clip_pin = registry.get(clip_model).active_pin
        if clip_pin is None:
            raise InstrumentError(
                f"{mlp.instrument.id} scores the embeddings of {clip_model}, which has no active pin in "
                f"{registry.lock_path}: pin it (`awb pin {clip_model}`) and materialize clip_embeddings for it first"
            )
        return AestheticSession(mlp, clip_pin.key, inputs.store, inputs.torch_settings.batch_size)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        return check_score_pairs(store, pairs)
