"""Object detection (seed 6): boxes with class names and scores per plate × detector pin, asset
``<family>_detections`` (``detr_detections``).

Seed 6: DETR is "an opinionated prior; treat as weak signal": its COCO classes are forced onto
illustrations, so counts compare plates against each other and never read as a census. Each box is
a record (plate-pixel XYWH, normalized ratios, score, label); the score threshold is a run setting
and part of the preprocess tag, so another threshold is another record set. Every partition shows
the plate's count per label ("how many birds?") and the spatial relations between its best boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import DETECTION_FAMILIES, GROUP_DETECTION
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Table
from awb_dagster.instruments.detection import ADAPTER_VERSION, ObjectDetector
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.boxes import (
    BOX_CHECK_DESCRIPTIONS,
    box_rows,
    box_summary,
    box_table,
    check_box_pairs,
    read_box_rows,
)
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

_RELATION_COLUMNS = {"subject": "string", "relation": "string", "object": "string"}


@dataclass(frozen=True)
class DetectionSettings:
    """``score_threshold``: boxes scoring below it are dropped (transformers' object-detection
    pipeline default, 0.5); it is in the preprocess tag and every box record."""

    score_threshold: float = 0.5


class DetectorSession:
    batch_size = 1  # one plate per forward: plates differ in size and the processor pads per batch

    def __init__(self, detector: ObjectDetector, max_pixels: int):
        self.instrument = detector
        self.store_key = detector.pin.key
        self.run_kind = f"{detector.instrument.family}-detections"
        self.code_version = ADAPTER_VERSION
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"score_threshold": self.instrument.score_threshold, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> Any:
        return self.instrument.load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        detector = self.instrument
        outputs = []
        for plate, image in batch:
            width, height = image.size
            rows = box_rows(
                detector.detect(image), width=width, height=height, score_threshold=detector.score_threshold,
                prompt=detector.prompt_record, plate_id=plate.plate_id, plate_sha256=plate.sha256,
                model_id=detector.instrument.id, model_sha=detector.pin.sha, pin_key=detector.pin.key,
                preprocess_tag=detector.preprocess_tag, run_id=run.run_id,
            )  # fmt: skip
            artifact = run.write_table("boxes", box_table(rows))
            record_ids = [row["record_id"] for row in rows]
            outputs.append(PlateOutput(plate, detector.preprocess_tag, record_ids, artifact, facts=box_summary(rows)))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        summary = facts if facts is not None else box_summary(read_box_rows(pair))
        return {
            "box_count": summary["box_count"],
            "counts_per_label": Json(summary["counts"]),
            "relations": Table(tuple(summary["relations"]), _RELATION_COLUMNS),
            "score_threshold": self.instrument.score_threshold,
            "intended_use": self.instrument.instrument.intended_use or "",
            "failure_modes": Json(list(self.instrument.instrument.failure_modes)),
        }


class DetectionProducer:
    """A closed-vocabulary detector family (``detr``): asset ``<family>_detections``."""

    group = GROUP_DETECTION
    code_version = ADAPTER_VERSION
    settings_type = DetectionSettings
    check_descriptions = BOX_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = False

    def __init__(self, family: str, description: str):
        self.family = family
        self.asset_name = f"{family.replace('-', '_')}_detections"
        self.pins_dimension = f"{family}_pins"
        self.description = description

    def open(self, pin_key: str, settings: DetectionSettings, inputs: StepInputs) -> DetectorSession:
        detector = inputs.instruments.detector(pin_key, self.family, score_threshold=settings.score_threshold)
        return DetectorSession(detector, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return check_box_pairs(pairs, sizes)


_DESCRIPTIONS = {
    "detr": "DETR object detection (seed 6): boxes over the checkpoint's fixed label set (COCO for "
    "facebook/detr-resnet-50), one record per box (plate-pixel XYWH, normalized ratios, score, class name) "
    "per plate × pin, with the count per label and the spatial relations between boxes per plate. An "
    "opinionated prior: a weak signal compared across plates.",
}
DETECTION_PRODUCERS = tuple(DetectionProducer(family, _DESCRIPTIONS[family]) for family in DETECTION_FAMILIES)
