"""Classifier probes (seed 7.3 WikiArt, 7.4 emotion, 7.5 Places365): logits and probabilities with their label
names per plate × probe pin, asset ``<family>_logits``.

Seed 7: "these models do not become canon; they become measured axes inside the manifold to make
variance legible". Each record carries the label set's sha256 and the calibration ("uncalibrated":
none of these checkpoints publishes one); the registry's failure modes and intended use are in the
run manifest. Probes with an undeclared license (``unknown``) run only with the license opt-in, and
automation requests only admitted pins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import GROUP_PROBES, PROBE_FAMILIES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Table
from awb_dagster.instruments.classifier import ADAPTER_VERSION, UNCALIBRATED, ImageClassifier, softmax
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.probes import PROBE_CHECK_DESCRIPTIONS, check_probe_pairs, probe_table
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

TOP_LABELS = 5  # rows of the per-partition top labels table


@dataclass(frozen=True)
class ProbeSettings:
    """No settings beyond the torch resource's: preprocessing is the checkpoint's own processor."""


class ClassifierSession:
    def __init__(self, classifier: ImageClassifier, torch_settings: Any, max_pixels: int):
        self.instrument = classifier
        self.store_key = classifier.pin.key
        self.run_kind = f"{classifier.instrument.family}-logits"
        self.code_version = classifier.adapter_version
        self.batch_size = torch_settings.batch_size
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> Any:
        return self.instrument.load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        probe = self.instrument
        logits = probe.logits([prepared for _, prepared in batch])
        probabilities = softmax(logits)
        tag = probe.preprocess_tag
        rows = [
            record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=probe.instrument.id, model_sha=probe.pin.sha,
                pin_key=probe.pin.key, preprocess_tag=tag, run_id=run.run_id, scope="plate",
            )  # fmt: skip
            for plate, _ in batch
        ]
        table = probe_table(rows, probe.labels, probe.label_set_sha256, logits, probabilities, UNCALIBRATED)
        artifact = run.write_table("probes", table)
        outputs = []
        for index, ((plate, _), row) in enumerate(zip(batch, rows)):
            order = probabilities[index].argsort()[::-1][:TOP_LABELS]
            top = [{"label": probe.labels[i], "probability": round(float(probabilities[index, i]), 6)} for i in order]
            outputs.append(PlateOutput(plate, tag, [row["record_id"]], artifact, facts={"top_labels": top}))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        probe = self.instrument
        metadata: dict[str, Any] = {
            "label_count": len(probe.labels),
            "label_set_sha256": probe.label_set_sha256,
            "calibration": Json(probe.calibration()),
            "intended_use": probe.instrument.intended_use or "",
            "failure_modes": Json(list(probe.instrument.failure_modes)),
        }
        if facts:
            metadata["top_labels"] = Table(tuple(facts["top_labels"]), {"label": "string", "probability": "float"})
        return metadata


class ClassifierProducer:
    """One classifier probe family (``wikiart``, ``emotion``, ``places365``): asset ``<family>_logits``."""

    group = GROUP_PROBES
    code_version = ADAPTER_VERSION
    settings_type = ProbeSettings
    check_descriptions = PROBE_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = True

    def __init__(self, family: str, description: str):
        self.family = family
        self.asset_name = f"{family}_logits"
        self.pins_dimension = f"{family}_pins"
        self.description = description

    def open(self, pin_key: str, settings: ProbeSettings, inputs: StepInputs) -> ClassifierSession:
        return ClassifierSession(inputs.instruments.classifier(pin_key, self.family), inputs.torch_settings, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        declared = {s.store_key: (s.instrument.declared_labels, s.instrument.label_set_sha256) for s in sessions.values()}
        return check_probe_pairs(pairs, declared)


_DESCRIPTIONS = {
    "wikiart": "WikiArt style/genre probe (seed 7.3): logits and uncalibrated probabilities over the "
    "checkpoint's labels, with the label set's sha256, one record per plate × pin. A painting-centric "
    "envelope axis, never a reading of the plate.",
    "emotion": "Emotion probe (seed 7.4): logits and uncalibrated probabilities over the checkpoint's "
    "labels, with the label set's sha256, one record per plate × pin. Biased (face and cartoon priors): "
    "use comparatively, never as a reading of the plate.",
    "places365": "Places365 scene probe (seed 7.5): logits and uncalibrated probabilities over the checkpoint's "
    "365 scene classes (a birder model), with the label set's sha256, one record per plate × pin. A weak "
    "composition axis from a photo scene prior, never a reading of the plate.",
}
PROBE_PRODUCERS = tuple(ClassifierProducer(family, _DESCRIPTIONS[family]) for family in PROBE_FAMILIES)
