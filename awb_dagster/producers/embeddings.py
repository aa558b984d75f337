"""Plate embeddings (seed 3-4): CLIP, SigLIP, DINOv2, AIMv2 and BiomedCLIP, one record per plate × pin.

Plates decode in the engine's threads while the model embeds the previous batch; each batch
of plates goes to one Parquet artifact of the pin's sealed run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import GROUP_EMBEDDINGS
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.embedding import ADAPTER_VERSION, ImageEmbedder
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CHECK_DESCRIPTIONS, CheckOutcome, check_embedding_pairs
from awb_dagster.provenance.records import embedding_table, record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair


@dataclass(frozen=True)
class EmbeddingSettings:
    """No settings beyond the torch resource's: preprocessing is the model's own processor."""


def declared_dim(embedder: ImageEmbedder) -> int:
    declared = embedder.instrument.expected_dim
    if declared is None:  # the admission gate requires it for vector outputs
        raise InstrumentError(
            f"{embedder.instrument.id}: roster.toml declares no expected_dim, so the dim check has "
            "nothing to check against; declare it"
        )
    return declared


def embedding_row(embedder: ImageEmbedder, plate: Plate, *, tag: str, run_id: str, scope: str, region: str | None) -> dict[str, Any]:
    """One embedding record's fields (the vector columns come with the table)."""
    return {
        **record_fields(
            plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=embedder.instrument.id,
            model_sha=embedder.pin.sha, pin_key=embedder.pin.key, preprocess_tag=tag,
            run_id=run_id, scope=scope, **({"region": region} if region is not None else {}),
        ),  # fmt: skip
        "scope": scope,
        "region_ref": region,
    }


class EmbeddingSession:
    def __init__(self, embedder: ImageEmbedder, torch_settings: Any, max_pixels: int):
        self.instrument = embedder
        self.store_key = embedder.pin.key
        self.run_kind = f"{embedder.instrument.family}-embeddings"
        self.code_version = ADAPTER_VERSION
        self.batch_size = torch_settings.batch_size
        self.declared_dim = declared_dim(embedder)
        self._decode_workers = torch_settings.decode_workers
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "decode_workers": self._decode_workers, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.tag_for(plate.format, plate.mode)

    def prepare(self, plate: Plate) -> Any:
        return self.instrument.load_plate(
            plate.path, plate.sha256, max_pixels=self._max_pixels, plate_format=plate.format, plate_mode=plate.mode
        )

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        embedder = self.instrument
        vectors = embedder.embed(embedder.pixel_values([prepared for _, prepared in batch]))
        tags = [self.expected_tag(plate) for plate, _ in batch]
        rows = [
            embedding_row(embedder, plate, tag=tag, run_id=run.run_id, scope="plate", region=None)
            for (plate, _), tag in zip(batch, tags)
        ]
        artifact = run.write_table("embeddings", embedding_table(rows, vectors))
        return [
            PlateOutput(plate, tag, [row["record_id"]], artifact)
            for (plate, _), tag, row in zip(batch, tags, rows)
        ]

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"vector_dim": self.instrument.dim}


class EmbeddingProducer:
    """One embedding family (``clip``, ``siglip``, ``dinov2``): asset ``<family>_embeddings``."""

    group = GROUP_EMBEDDINGS
    code_version = ADAPTER_VERSION
    settings_type = EmbeddingSettings
    check_descriptions = CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = False

    def __init__(self, family: str, description: str):
        self.family = family
        self.asset_name = f"{family}_embeddings"
        self.pins_dimension = f"{family}_pins"
        self.description = description

    def open(self, pin_key: str, settings: EmbeddingSettings, inputs: StepInputs) -> EmbeddingSession:
        embedder = inputs.instruments.embedder(pin_key, self.family)
        return EmbeddingSession(embedder, inputs.torch_settings, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        dims = {session.store_key: session.declared_dim for session in sessions.values()}
        return check_embedding_pairs(store, pairs, declared_dims=dims)


EMBEDDING_PRODUCERS = (
    EmbeddingProducer(
        "clip",
        "CLIP image embeddings (projected image_embeds; open_clip checkpoints: encode_image), raw and "
        "L2-normalized, one record per plate × pinned CLIP model. Preprocessing follows the model's own "
        "image processor config (open_clip: its preprocess_cfg).",
    ),
    EmbeddingProducer(
        "siglip",
        "SigLIP image embeddings (vision tower pooler_output), raw and L2-normalized, one record "
        "per plate × pinned SigLIP model.",
    ),
    EmbeddingProducer(
        "dinov2",
        "DINOv2 image embeddings (CLS token after the final layernorm, pooler_output), raw and "
        "L2-normalized, one record per plate × pinned DINOv2 model.",
    ),
    EmbeddingProducer(
        "aimv2",
        "AIMv2 image embeddings (mean of the final RMS-normed patch tokens: no CLS token, no head), raw "
        "and L2-normalized, one record per plate × pinned AIMv2 model (seed 4.2, global-structure axis).",
    ),
    EmbeddingProducer(
        "biomedclip",
        "BiomedCLIP image embeddings (open_clip encode_image of the timm ViT tower), raw and "
        "L2-normalized, one record per plate × pinned model: a deliberately biased axis (seed 4.3).",
    ),
)
