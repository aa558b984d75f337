"""ConvNet texture baselines (seed 11): pooled features and Gram descriptors per plate × torchvision pin.

The pooled features are plate embeddings (asset ``convnet_embeddings``): the atlas, the disagreement
and the topology report read them like CLIP's. The same record carries the Gram descriptors of the
declared layers (:mod:`awb_dagster.provenance.textures`). Weights are a local file pinned by sha256
(``awb pin KEY --file PATH``); their license is undeclared (``unknown``), so pins run only with the
license opt-in, and automation requests only admitted pins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import GROUP_EMBEDDINGS, TEXTURE_FAMILIES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json
from awb_dagster.instruments.convnet import ADAPTER_VERSION, ConvNetFeatures
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.producers.embeddings import embedding_row
from awb_dagster.provenance.checks import CHECK_DESCRIPTIONS, CheckOutcome, check_embedding_pairs
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair
from awb_dagster.provenance.textures import TEXTURE_CHECK_DESCRIPTIONS, check_texture_pairs, texture_table

FAMILY = TEXTURE_FAMILIES[0]


@dataclass(frozen=True)
class ConvNetSettings:
    """No settings beyond the torch resource's: the transforms are the weight enum's, the pooled
    node and Gram layers are declared per architecture (and named in the preprocess tag)."""


class ConvNetSession:
    def __init__(self, features: ConvNetFeatures, torch_settings: Any, max_pixels: int):
        self.instrument = features
        self.store_key = features.pin.key
        self.run_kind = "convnet-embeddings"
        self.code_version = ADAPTER_VERSION
        self.batch_size = torch_settings.batch_size
        self.declared_dim = features.dim
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> Any:
        return self.instrument.load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        features = self.instrument
        vectors, grams = features.features([prepared for _, prepared in batch])
        tag = features.preprocess_tag
        rows = [
            embedding_row(features, plate, tag=tag, run_id=run.run_id, scope="plate", region=None)
            for plate, _ in batch
        ]
        artifact = run.write_table("embeddings", texture_table(rows, vectors, grams))
        return [PlateOutput(plate, tag, [row["record_id"]], artifact) for (plate, _), row in zip(batch, rows)]

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"vector_dim": self.instrument.dim, "gram_layers": Json(self.instrument.gram_lengths)}


class ConvNetProducer:
    """The torchvision texture baselines: asset ``convnet_embeddings``."""

    asset_name = f"{FAMILY}_embeddings"
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_EMBEDDINGS
    description = (
        "ConvNet texture baselines (torchvision ResNet/VGG/EfficientNet/ConvNeXt at a pinned weight file): "
        "pooled features as plate embeddings (raw and L2-normalized; the atlas maps them like CLIP's) and "
        "Gram-matrix texture descriptors of declared layers, one record per plate × pin."
    )
    code_version = ADAPTER_VERSION
    settings_type = ConvNetSettings
    check_descriptions = {**CHECK_DESCRIPTIONS, **TEXTURE_CHECK_DESCRIPTIONS}
    upstream: tuple[str, ...] = ()
    license_gated = True
    family = FAMILY

    def open(self, pin_key: str, settings: ConvNetSettings, inputs: StepInputs) -> ConvNetSession:
        return ConvNetSession(inputs.instruments.convnet(pin_key), inputs.torch_settings, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        dims = {session.store_key: session.declared_dim for session in sessions.values()}
        lengths = {session.store_key: session.instrument.gram_lengths for session in sessions.values()}
        return {**check_embedding_pairs(store, pairs, declared_dims=dims), **check_texture_pairs(pairs, lengths)}
