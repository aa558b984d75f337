"""Box-prompted masks (seed 6 → 5, text → boxes → masks): asset ``box_masks``, partitioned by plate
× ``<detector pin>~<SAM pin>``.

For each pin pair, the SEALED box records of the detector pin (``detr_detections`` or
``grounding_dino_detections``; never re-detected) prompt the pinned SAM, one mask per box
(instruments/box_sam.py, the same SAM as ``sam_masks``, not its automatic point grid). The masks
follow the ``sam_masks`` contract plus the box they came from (provenance/box_masks.py), so lineage
runs mask -> box -> prompt -> detector pin -> plate, and segment embeddings take these mask sets
like any other (segment key ``<embedding pin>~<detector pin>~<SAM pin>``). A plate without a sealed
box set of the detector pin fails its partition, naming the detector asset and partition to run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from awb_dagster.constants import DETECTION_FAMILIES, GROUNDING_FAMILIES, GROUP_SEGMENTATION
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Markdown
from awb_dagster.instruments.amg import GeneratorSettings
from awb_dagster.instruments.box_sam import BOX_PROMPT_VERSION, box_prompt_tag, box_prompted_masks
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.sam import ADAPTER_VERSION as SAM_ADAPTER_VERSION
from awb_dagster.instruments.sam import MaskGenerator
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.previews import inline_png
from awb_dagster.producers.sam import mask_summary, preview_png, preview_relpath
from awb_dagster.provenance.box_masks import (
    BOX_REF_CHECK_DESCRIPTION,
    BOX_REFS_RESOLVE,
    BoxSet,
    BoxSets,
    box_mask_rows,
    box_mask_table,
    check_box_refs,
    xyxy,
)
from awb_dagster.provenance.checks import BOX_MASK_RUN_KIND, MASK_CHECK_DESCRIPTIONS, CheckOutcome, check_mask_pairs
from awb_dagster.provenance.records import split_box_mask_pin_key
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

CODE_VERSION = f"{BOX_PROMPT_VERSION}+{SAM_ADAPTER_VERSION}"
# The detector families whose sealed boxes prompt SAM, and the asset that seals them.
DETECTOR_ASSETS = {family: f"{family.replace('-', '_')}_detections" for family in (*DETECTION_FAMILIES, *GROUNDING_FAMILIES)}
BOX_PROMPT_FAMILIES = ("sam",)  # SamModel pins (hub or converted originals); SAM-HQ's decoder is not wired


@dataclass(frozen=True)
class BoxMaskSettings:
    """``box_preprocess_tag``: the detector's preprocess tag of the box sets to prompt with (its
    thresholds and, for GroundingDINO, its prompt); empty = each plate's newest sealed box set."""

    box_preprocess_tag: str = ""


def boxes_tag(detector_pin: str, box_preprocess_tag: str) -> str:
    """Names the box set that prompted the masks: the detector pin and a digest of its tag."""
    return f"boxes={detector_pin}:{hashlib.sha256(box_preprocess_tag.encode()).hexdigest()[:12]}"


class BoxMaskSession:
    batch_size = 1  # one plate per image embedding; its decode and box read overlap the last plate's masks
    run_kind = BOX_MASK_RUN_KIND
    code_version = CODE_VERSION

    def __init__(self, generator: MaskGenerator, boxes: BoxSets, detector_family: str, store_key: str, max_pixels: int):
        self.instrument = generator
        self.store_key = store_key
        self.boxes = boxes
        self.detector_family = detector_family
        self._sam_tag = box_prompt_tag(generator)
        self._max_pixels = max_pixels

    def tag_for(self, box_pair: SealedPair) -> str:
        return f"{self._sam_tag};{boxes_tag(self.boxes.detector_pin, box_pair.preprocess_tag)}"

    def run_config(self) -> dict[str, Any]:
        return {
            "detector_pin": self.boxes.detector_pin,
            "detector_family": self.detector_family,
            "detector_asset": self.boxes.detector_asset,
            "box_preprocess_tag": self.boxes.box_tag or "newest per plate",
            "box_prompt": BOX_PROMPT_VERSION,
            "max_pixels": self._max_pixels,
        }

    def expected_tag(self, plate: Plate) -> str | None:
        try:
            return self.tag_for(self.boxes.pair(plate))
        except InstrumentError:
            return None  # prepare() fails the plate naming the detector asset to run

    def prepare(self, plate: Plate) -> tuple[BoxSet, Any, Any]:
        box_set = self.boxes.load(plate)
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)
        expected = [image.height, image.width]
        for row in box_set.rows:
            if list(row["plate_size"]) != expected:
                raise InstrumentError(
                    f"box {row['record_id']} of {self.boxes.detector_pin} was detected on a {row['plate_size']} "
                    f"(height, width) plate, plate {plate.plate_id} decodes to {expected}; re-materialize "
                    f"{self.boxes.detector_asset} for it"
                )
        return box_set, image, opaque

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        generator = self.instrument
        outputs = []
        for plate, (box_set, image, opaque) in batch:
            masks = box_prompted_masks(generator, image, [xyxy(row["bbox"]) for row in box_set.rows], opaque)
            tag = self.tag_for(box_set.pair)
            rows = box_mask_rows(
                masks, box_set.rows, detector_pin=self.boxes.detector_pin, plate_id=plate.plate_id,
                plate_sha256=plate.sha256, model_id=generator.instrument.id, model_sha=generator.pin.sha,
                pin_key=generator.pin.key, preprocess_tag=tag, run_id=run.run_id,
            )  # fmt: skip
            artifact = run.write_table("masks", box_mask_table(rows))
            run.write_bytes(preview_relpath(artifact.path), preview_png(image, [m.mask for m in masks if m.mask.any()]))
            facts = {
                "boxes": len(box_set.rows),
                "boxes_without_mask": len(box_set.rows) - len(rows),
                "box_run_id": box_set.pair.run_id,
                "box_preprocess_tag": box_set.pair.preprocess_tag,
            }
            outputs.append(PlateOutput(plate, tag, [row["record_id"] for row in rows], artifact, facts))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        labels = pq.read_table(pair.artifact_path, columns=["label"]).column("label").to_pylist()
        preview = pair.artifact_path.parent / preview_relpath(pair.artifact)
        metadata = {
            **mask_summary(pair),
            "counts_per_label": Json(dict(sorted(Counter(labels).items()))),
            "detector_pin": self.boxes.detector_pin,
            "preview": preview,
            "preview_image": Markdown(inline_png(f"box masks over {pair.plate_id}", preview)),
        }
        if facts:
            metadata.update(facts)
        return metadata


class BoxMaskProducer:
    """``upstream``: the detection assets of the roster's detector families."""

    asset_name = "box_masks"
    pins_dimension = "box_mask_pins"
    group = GROUP_SEGMENTATION
    description = (
        "Box-prompted SAM masks (text -> boxes -> masks): the sealed boxes of one detector pin (DETR classes or "
        "GroundingDINO prompt phrases) prompt one SAM pin, one mask per box, per plate × `<detector pin>~<SAM pin>`. "
        "The sam_masks contract (COCO RLE, sha256, geometry) plus the box record each mask came from (label, "
        "prompt id and sha256); box-sam version and detector pin in the preprocess tag."
    )
    code_version = CODE_VERSION
    settings_type = BoxMaskSettings
    check_descriptions = {**MASK_CHECK_DESCRIPTIONS, BOX_REFS_RESOLVE: BOX_REF_CHECK_DESCRIPTION}
    license_gated = False

    def __init__(self, upstream: tuple[str, ...] = tuple(DETECTOR_ASSETS.values())):
        self.upstream = upstream

    def open(self, pin_key: str, settings: BoxMaskSettings, inputs: StepInputs) -> BoxMaskSession:
        try:
            detector_pin, sam_pin = split_box_mask_pin_key(pin_key)
        except ValueError as exc:
            raise InstrumentError(f"box_masks: {exc}") from exc
        instruments = inputs.instruments
        detector_family, sam_family = instruments.family_of(detector_pin), instruments.family_of(sam_pin)
        if detector_family not in DETECTOR_ASSETS:
            raise InstrumentError(
                f"box_masks {pin_key}: pin {detector_pin} is a {detector_family} model, not a detector "
                f"({', '.join(DETECTOR_ASSETS)})"
            )
        if sam_family not in BOX_PROMPT_FAMILIES:
            raise InstrumentError(
                f"box_masks {pin_key}: pin {sam_pin} is a {sam_family} model; box prompts run on "
                f"{', '.join(BOX_PROMPT_FAMILIES)} pins (SamModel) only"
            )
        generator = instruments.mask_generator(sam_pin, GeneratorSettings())
        boxes = BoxSets(inputs.store, detector_pin, DETECTOR_ASSETS[detector_family], settings.box_preprocess_tag)
        return BoxMaskSession(generator, boxes, detector_family, pin_key, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return {**check_mask_pairs(pairs, sizes), **check_box_refs(store, pairs)}
