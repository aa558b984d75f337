"""Text-conditioned detection (seed 6: GroundingDINO): boxes for the phrases of one registry prompt
per plate × pin, asset ``grounding_dino_detections``.

The same box contract as ``detr_detections`` (provenance/boxes.py), with the prompt's id and sha256
in the preprocess tag and in every box, the matched phrase as label, and one more blocking check:
every box's prompt sha256 is the registry's. Seed 6: "prompt registry discipline required"; it
finds what it is asked for, so counts of absent objects are hallucinations to compare, not facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awb_dagster.constants import GROUP_DETECTION
from awb_dagster.engine.producer import StepInputs
from awb_dagster.engine.values import Json
from awb_dagster.instruments.grounding import ADAPTER_VERSION, GroundedDetector
from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.producers.detections import DetectorSession
from awb_dagster.provenance.boxes import (
    BOX_CHECK_DESCRIPTIONS,
    BOX_PROMPT_MATCHES_REGISTRY,
    PROMPT_CHECK_DESCRIPTION,
    check_box_pairs,
    check_box_prompts,
)
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.store import RunStore, SealedPair
from awb_dagster.registry.prompts import PromptRegistry


@dataclass(frozen=True)
class GroundingSettings:
    """``prompt_id``: a detection prompt of the registry (its highest version); ``box_threshold`` and
    ``text_threshold``: transformers' GroundingDINO example values. All three are in the tag."""

    prompt_id: str = "grounding.bird"
    box_threshold: float = 0.35
    text_threshold: float = 0.25


class GroundedSession(DetectorSession):
    code_version = ADAPTER_VERSION

    def __init__(self, detector: GroundedDetector, max_pixels: int):
        super().__init__(detector, max_pixels)
        self.code_version = ADAPTER_VERSION

    def run_config(self) -> dict[str, Any]:
        detector = self.instrument
        return {**super().run_config(), "text_threshold": detector.text_threshold, "prompt": detector.prompt.record()}

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        detector = self.instrument
        return {
            **super().partition_metadata(pair, facts),
            "prompt": Json({**detector.prompt.record(), "text": detector.text}),
            "text_threshold": detector.text_threshold,
        }


class GroundingProducer:
    family = "grounding-dino"
    asset_name = "grounding_dino_detections"
    pins_dimension = "grounding-dino_pins"
    group = GROUP_DETECTION
    description = (
        "GroundingDINO text-conditioned detection (seed 6): boxes for the phrases of one prompt of the prompt "
        "registry, one record per box (plate-pixel XYWH, normalized ratios, score, matched phrase, prompt id and "
        "sha256) per plate × pin, with counts per phrase and spatial relations per plate. It finds what it is "
        "asked for: a weak signal under prompt-registry discipline."
    )
    code_version = ADAPTER_VERSION
    settings_type = GroundingSettings
    check_descriptions = {**BOX_CHECK_DESCRIPTIONS, BOX_PROMPT_MATCHES_REGISTRY: PROMPT_CHECK_DESCRIPTION}
    upstream: tuple[str, ...] = ()
    license_gated = False

    def open(self, pin_key: str, settings: GroundingSettings, inputs: StepInputs) -> GroundedSession:
        prompt = PromptRegistry.load().get(settings.prompt_id)
        detector = inputs.instruments.grounded_detector(
            pin_key, self.family, prompt, box_threshold=settings.box_threshold, text_threshold=settings.text_threshold
        )
        return GroundedSession(detector, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        registry_shas: dict[str, set[str]] = {}
        for (prompt_id, _), prompt in PromptRegistry.load().prompts.items():
            registry_shas.setdefault(prompt_id, set()).add(prompt.sha256)
        return {**check_box_pairs(pairs, sizes), BOX_PROMPT_MATCHES_REGISTRY: check_box_prompts(pairs, registry_shas)}
