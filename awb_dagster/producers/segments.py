"""Segment embeddings: every SAM mask of a plate, cut by the declared crop policy and embedded
by one CLIP/SigLIP/DINOv2 pin. Partitioned by plate × ``<embedding pin>~<SAM pin>``;
``region_ref`` is the mask record id, so lineage runs embedding -> mask -> SAM pin -> plate.
Box-prompted mask sets (``box_masks``) are embedded the same way under
``<embedding pin>~<detector pin>~<SAM pin>``: lineage then runs on to the box, its prompt and
the detector pin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from awb_dagster.constants import GROUP_REGIONS
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.regions import CropPolicy, RegionError, masks_tag
from awb_dagster.engine.producer import StepInputs
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.regions import CODE_VERSION, PlateRegions, Region, RegionSession, embedding_outcomes, region_embedder
from awb_dagster.provenance.checks import CHECK_DESCRIPTIONS, REGION_CHECK_DESCRIPTIONS, SEGMENT_REFS_RESOLVE, CheckOutcome, check_segment_refs
from awb_dagster.provenance.masksets import MaskSets
from awb_dagster.provenance.records import split_segment_pin_key
from awb_dagster.provenance.store import RunStore, SealedPair

_CROP = CropPolicy()


@dataclass(frozen=True)
class SegmentSettings:
    """The crop policy (recorded in the preprocess tag) and which mask set to embed."""

    padding: float = _CROP.padding  # bbox grown by this fraction of its longer side, each side
    apply_mask: bool = _CROP.apply_mask  # pixels outside the mask take `fill`
    fill: tuple[int, int, int] = _CROP.fill  # RGB for outside-mask and transparent pixels
    min_region_area: int = _CROP.min_region_area  # masks smaller than this (pixels) are skipped
    # The SAM preprocess tag (generator settings) of the masks to embed; empty = the newest
    # sealed mask set of each plate under the SAM pin.
    sam_preprocess_tag: str = ""

    def policy(self) -> CropPolicy:
        try:
            return CropPolicy(
                padding=self.padding, apply_mask=self.apply_mask, fill=tuple(self.fill), min_region_area=self.min_region_area
            )
        except RegionError as exc:
            raise RegionError(f"segment_embeddings config: {exc}") from exc


def segment_tag(embedder: ImageEmbedder, policy: CropPolicy, sam_pin: str, sam_tag: str) -> str:
    """The preprocess tag of segment records: the embedder's, the crop policy, the mask set."""
    return f"{embedder.preprocess_tag};{policy.tag()};{masks_tag(sam_pin, sam_tag)}"


def segment_cutter(embedder: ImageEmbedder, masks: MaskSets, policy: CropPolicy, max_pixels: int):
    """Plate -> its mask crops, prepared for ``embedder``. Thread-safe."""
    from pycocotools import mask as mask_utils

    def cut(plate: Plate) -> PlateRegions:
        plate_masks = masks.load(plate)
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        pixels = np.asarray(image)
        regions, small = [], 0
        for row in plate_masks.rows:
            if row["area"] < policy.min_region_area:
                small += 1
                continue
            mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
            crop = policy.crop(pixels, mask.astype(bool), tuple(row["bbox"]), opaque)
            regions.append(Region(row["record_id"], embedder.prepare(crop)))
        pair = plate_masks.pair
        facts = {
            "masks": len(plate_masks.rows),
            "skipped_below_min_area": small,
            "mask_run_id": pair.run_id,
            "mask_artifact": str(pair.artifact_path),
            "sam_preprocess_tag": pair.preprocess_tag,
        }
        return PlateRegions(plate, segment_tag(embedder, policy, masks.sam_pin, pair.preprocess_tag), regions, facts)

    return cut


class SegmentProducer:
    asset_name = "segment_embeddings"
    pins_dimension = "segment_pins"
    group = GROUP_REGIONS
    description = (
        "For each SAM mask of a plate, an embedding from one CLIP/SigLIP/DINOv2 pin: partitioned by plate × "
        "`<embedding pin>~<SAM pin>`. The crop policy and the mask set are in the preprocess tag; `region_ref` is "
        "the mask record id. Box-prompted masks: `<embedding pin>~<detector pin>~<SAM pin>`."
    )
    code_version = CODE_VERSION
    settings_type = SegmentSettings
    check_descriptions = {**CHECK_DESCRIPTIONS, SEGMENT_REFS_RESOLVE: REGION_CHECK_DESCRIPTIONS[SEGMENT_REFS_RESOLVE]}
    license_gated = False

    def __init__(self, upstream: tuple[str, ...] = ("sam_masks",)):
        self.upstream = upstream  # the mask assets it embeds: sam_masks, and box_masks where detectors run

    def open(self, pin_key: str, settings: SegmentSettings, inputs: StepInputs) -> RegionSession:
        policy = settings.policy()
        embedding_pin, sam_pin = split_segment_pin_key(pin_key)
        embedder = region_embedder(inputs.instruments, embedding_pin)
        masks = MaskSets(inputs.store, sam_pin, settings.sam_preprocess_tag)

        def expected(plate: Plate) -> str | None:
            """The tag of the plate's records, so sealed plates are skipped; None: cut() reports why not."""
            try:
                return segment_tag(embedder, policy, sam_pin, masks.pair(plate).preprocess_tag)
            except RegionError:
                return None

        config = {
            "crop_policy": policy.tag(),
            "sam_pin": sam_pin,
            "sam_preprocess_tag": settings.sam_preprocess_tag or "newest per plate",
        }
        return RegionSession(
            embedder, scope="segment", store_key=pin_key, cut=segment_cutter(embedder, masks, policy, inputs.max_pixels),
            expected_tag=expected, config=config, torch_settings=inputs.torch_settings,
        )  # fmt: skip

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        return {**embedding_outcomes(store, pairs, sessions), **check_segment_refs(store, pairs)}
