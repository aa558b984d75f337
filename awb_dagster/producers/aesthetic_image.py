"""Image-fed aesthetic scores (seed 7.1, the aesthetics predictor V1 of shunk031/aesthetics-predictor-v1-*):
one score per plate × pin, asset ``aesthetic_image_scores``, computed from the plate's pixels by the
pin's own CLIP vision tower and linear head (the checkpoint holds both; no CLIP record is read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import GROUP_PROBES, SCORE_ASSETS
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.instruments.aesthetic_v1 import ADAPTER_VERSION, CALIBRATION, AestheticPredictorV1
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.image_scores import (
    IMAGE_SCORE_CHECK_DESCRIPTIONS,
    check_image_score_pairs,
    image_score_table,
)
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

FAMILY = "aesthetic-image"


@dataclass(frozen=True)
class ImageScoreSettings:
    """No settings beyond the torch resource's: preprocessing is the checkpoint's own processor."""


class ImageScoreSession:
    def __init__(self, predictor: AestheticPredictorV1, batch_size: int, max_pixels: int):
        self.instrument = predictor
        self.store_key = predictor.pin.key
        self.run_kind = "aesthetic-image-scores"
        self.code_version = predictor.adapter_version
        self.batch_size = batch_size
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> Any:
        return self.instrument.load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        probe = self.instrument
        scores = probe.scores([prepared for _, prepared in batch])
        tag = probe.preprocess_tag
        rows = [
            record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=probe.instrument.id, model_sha=probe.pin.sha,
                pin_key=probe.pin.key, preprocess_tag=tag, run_id=run.run_id, scope="plate",
            )  # fmt: skip
            for plate, _ in batch
        ]
        artifact = run.write_table("scores", image_score_table(rows, scores, CALIBRATION))
        return [
            PlateOutput(plate, tag, [row["record_id"]], artifact, facts={"score": float(score)})
            for (plate, _), row, score in zip(batch, rows, scores)
        ]

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"calibration": CALIBRATION, "intended_use": self.instrument.instrument.intended_use or ""}
        if facts:
            metadata["score"] = round(facts["score"], 6)
        return metadata


class AestheticImageProducer:
    """The image-fed aesthetics predictors: asset ``aesthetic_image_scores``."""

    asset_name = SCORE_ASSETS[FAMILY]
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_PROBES
    description = (
        "Aesthetic score (seed 7.1) per plate × aesthetics predictor V1 pin, from the plate's pixels through the "
        "pin's own CLIP vision tower (transformers CLIPVisionModelWithProjection) and LAION's linear head on the "
        "L2-normalized image embedding. A sorting heuristic and pipeline fingerprint: a measured axis, never a "
        "verdict on a plate."
    )
    code_version = ADAPTER_VERSION
    settings_type = ImageScoreSettings
    check_descriptions = IMAGE_SCORE_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = True
    family = FAMILY

    def open(self, pin_key: str, settings: ImageScoreSettings, inputs: StepInputs) -> ImageScoreSession:
        predictor = inputs.instruments.aesthetic_v1(pin_key)
        return ImageScoreSession(predictor, inputs.torch_settings.batch_size, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        return check_image_score_pairs(pairs)
