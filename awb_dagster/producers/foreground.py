"""Foreground prior (seed 5.4): one foreground mask per plate × U^2-Net pin, asset ``foreground_masks``.

A fast figure-vs-paper prior, never semantics. Per plate: the mask record of
:mod:`awb_dagster.provenance.foreground` (COCO RLE, sha256, geometry, foreground fraction) and
the 8-bit saliency map it was thresholded from (lossless PNG at plate resolution). With
``sam_pin`` set, each record also holds the IoU of the mask with the union of that SAM pin's
newest sealed mask set for the plate (``sam_tag`` chooses a set), naming the run and artifact it
read: a sanity axis against the heavier model. The SAM set is part of the preprocess tag, so a
newer sealed set (or a different ``sam_pin``) makes the plate run again; a plate without a set
gets a record whose SAM fields are null and runs again once one is sealed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_SEGMENTATION, SAM_FAMILIES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Markdown
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.regions import RegionError
from awb_dagster.instruments.u2net import ADAPTER_VERSION, ForegroundSegmenter, ForegroundSettings
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.previews import inline_png
from awb_dagster.provenance.checks import MASK_CHECK_DESCRIPTIONS, CheckOutcome, check_mask_pairs
from awb_dagster.provenance.foreground import (
    FOREGROUND_CHECK_DESCRIPTIONS,
    SamAgreement,
    check_foreground_pairs,
    foreground_row,
    foreground_table,
    saliency_png,
)
from awb_dagster.provenance.masksets import MaskSets
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

FAMILY = "u2net"
FOREGROUND_ASSET = "foreground_masks"
PREVIEW_MAX_SIDE = 256  # inlined in the event log: keep it small


@dataclass(frozen=True)
class ForegroundRunSettings:
    """The mask threshold, and the SAM pin whose sealed masks the foreground is compared with."""

    threshold: int = 128  # saliency (0..255) at or above which a pixel is foreground
    sam_pin: str = ""  # a SAM or SAM-HQ pin key; empty: no agreement computed
    sam_tag: str = ""  # the SAM preprocess tag to compare with; empty: each plate's newest sealed set


@dataclass(frozen=True)
class Prepared:
    image: Image.Image
    opaque: np.ndarray | None
    agreement: SamAgreement | None


def preview_png(image: Image.Image, mask: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """The plate with its background dimmed, at most ``max_side`` on the longest side (PNG bytes)."""
    import io

    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    keep = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    shown = np.where(keep[..., None], base, 0.25 * base + 0.75 * np.array([40.0, 60.0, 160.0]))
    buffer = io.BytesIO()
    Image.fromarray(shown.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class ForegroundSession:
    run_kind = "foreground-masks"
    code_version = ADAPTER_VERSION

    def __init__(self, segmenter: ForegroundSegmenter, settings: ForegroundRunSettings, inputs: StepInputs):
        self.instrument = segmenter
        self.store_key = segmenter.pin.key
        self.batch_size = inputs.torch_settings.batch_size
        self.settings = settings
        self._max_pixels = inputs.max_pixels
        self._masks = MaskSets(inputs.store, settings.sam_pin, settings.sam_tag) if settings.sam_pin else None

    def run_config(self) -> dict[str, Any]:
        return {"foreground": self.instrument.describe()["foreground"], "sam_pin": self.settings.sam_pin,
                "sam_tag": self.settings.sam_tag, "max_pixels": self._max_pixels}  # fmt: skip

    def _sam_pair(self, plate: Plate) -> SealedPair | None:
        try:
            return self._masks.pair(plate) if self._masks is not None else None
        except RegionError:  # no sealed set for this plate: the record says so (null SAM fields)
            return None

    def expected_tag(self, plate: Plate) -> str:
        tag = self.instrument.preprocess_tag
        if self._masks is None:
            return tag
        pair = self._sam_pair(plate)
        return f"{tag};agree=sam:{self.settings.sam_pin}@{pair.run_id if pair else 'none'}"

    def prepare(self, plate: Plate) -> Prepared:
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)
        agreement = None
        if self._masks is not None:
            pair = self._sam_pair(plate)
            agreement = SamAgreement(self.settings.sam_pin, self._masks.load(plate) if pair else None)
        return Prepared(image, opaque, agreement)

    def process(self, batch: Sequence[tuple[Plate, Prepared]], run: OpenRun) -> list[PlateOutput]:
        segmenter = self.instrument
        results = segmenter.segment([p.image for _, p in batch], [p.opaque for _, p in batch])
        outputs = []
        for (plate, prepared), foreground in zip(batch, results):
            part = sum(1 for output in run.outputs if output.path.startswith("foreground-"))
            saliency_relpath, preview_relpath = f"saliency-{part:05d}.png", f"preview-{part:05d}.png"
            png = saliency_png(foreground.saliency)
            tag = self.expected_tag(plate)
            row = foreground_row(
                foreground.mask, alpha_excluded=foreground.alpha_excluded, saliency_sha256=hashlib.sha256(png).hexdigest(),
                saliency_path=saliency_relpath, threshold=segmenter.settings.threshold,
                d0_range=(foreground.d0_min, foreground.d0_max), agreement=prepared.agreement,
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=segmenter.instrument.id,
                model_sha=segmenter.pin.sha, pin_key=segmenter.pin.key, preprocess_tag=tag, run_id=run.run_id,
            )  # fmt: skip
            artifact = run.write_table("foreground", foreground_table([row]))
            if artifact.path != f"foreground-{part:05d}.parquet":
                raise RuntimeError(f"run {run.run_id}: wrote {artifact.path}, expected part {part:05d}")
            run.write_bytes(saliency_relpath, png, rows=foreground.saliency.shape[0])
            run.write_bytes(preview_relpath, preview_png(prepared.image, foreground.mask))
            facts = {"foreground_fraction": row["foreground_fraction"], "sam_union_iou": row.get("sam_union_iou")}
            outputs.append(PlateOutput(plate, tag, [row["record_id"]], artifact, facts))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        (row,) = pq.read_table(pair.artifact_path).to_pylist()
        part = pair.artifact.removeprefix("foreground-").removesuffix(".parquet")
        preview = pair.artifact_path.parent / f"preview-{part}.png"
        metadata: dict[str, Any] = {
            "foreground_fraction": round(row["foreground_fraction"], 6),
            "area": row["area"],
            "bbox": Json(row["bbox"]),
            "fragmentation": row["fragmentation"],
            "mask_sha256": row["mask_sha256"],
            "saliency": pair.artifact_path.parent / row["saliency_path"],
            "saliency_sha256": row["saliency_sha256"],
            "foreground": Json(self.instrument.describe()["foreground"]),
            "intended_use": self.instrument.instrument.intended_use or "",
            "preview_image": Markdown(inline_png(f"foreground of {pair.plate_id}", preview)),
        }
        if row["sam_pin"]:
            iou = row["sam_union_iou"]
            metadata["sam_agreement"] = Json({
                "sam_pin": row["sam_pin"], "sam_run_id": row["sam_run_id"], "sam_artifact": row["sam_artifact"],
                "sam_mask_count": row["sam_mask_count"], "sam_union_fraction": row["sam_union_fraction"],
                "sam_union_iou": None if iou is None else round(iou, 6),
            })  # fmt: skip
        return metadata


class ForegroundProducer:
    """U^2-Net foreground masks: asset ``foreground_masks`` (seed 5.4)."""

    asset_name = FOREGROUND_ASSET
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_SEGMENTATION
    description = (
        "Foreground prior (seed 5.4, U^2-Net through carvekit's architecture): per plate × pinned model a "
        "foreground mask (COCO RLE, sha256, bbox, area, centroid), the foreground fraction and the saliency map "
        "PNG it was thresholded from. With `sam_pin`, the IoU of the mask with the union of that SAM pin's sealed "
        "masks (a sanity axis). A fast figure-vs-paper prior, never semantics."
    )
    code_version = ADAPTER_VERSION
    settings_type = ForegroundRunSettings
    check_descriptions = {**MASK_CHECK_DESCRIPTIONS, **FOREGROUND_CHECK_DESCRIPTIONS}
    upstream: tuple[str, ...] = ()
    license_gated = True
    family = FAMILY

    def open(self, pin_key: str, settings: ForegroundRunSettings, inputs: StepInputs) -> ForegroundSession:
        if settings.sam_pin and inputs.instruments.family_of(settings.sam_pin) not in SAM_FAMILIES:
            raise InstrumentError(
                f"sam_pin {settings.sam_pin} is a {inputs.instruments.family_of(settings.sam_pin)} pin, not SAM "
                f"({', '.join(SAM_FAMILIES)}); give the key of a SAM pin whose sam_masks are sealed"
            )
        segmenter = inputs.instruments.foreground_segmenter(pin_key, ForegroundSettings(settings.threshold))
        return ForegroundSession(segmenter, settings, inputs)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return {**check_mask_pairs(pairs, sizes), **check_foreground_pairs(pairs, sizes)}
