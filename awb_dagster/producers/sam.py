"""Segment Anything masks (seed 5.1): class-agnostic region proposals per plate × SAM pin.

The generator loads once per (pin, settings); each plate's masks go to their own Parquet file
(COCO RLE records) and PNG preview. A plate where no mask passes the filters is a valid, empty
result. Every generator parameter is run config, in the manifest and (except the memory bound
``points_per_batch``) in the preprocess tag.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_SEGMENTATION
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Markdown
from awb_dagster.instruments.amg import GeneratorSettings
from awb_dagster.instruments.sam import ADAPTER_VERSION, MaskGenerator
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.previews import inline_png
from awb_dagster.provenance.checks import MASK_CHECK_DESCRIPTIONS, CheckOutcome, check_mask_pairs
from awb_dagster.provenance.records import mask_table
from awb_dagster.provenance.rows import mask_rows
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

PREVIEW_MAX_SIDE = 256  # the preview is inlined in the event log: keep it small


def preview_png(image: Image.Image, masks: list[np.ndarray], max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """The masks over the plate (largest first, so small masks stay visible), as PNG bytes."""
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    colors = np.random.default_rng(0).integers(40, 256, size=(max(len(masks), 1), 3))
    for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        small = np.asarray(Image.fromarray(masks[index]).resize(size, Image.Resampling.NEAREST))
        base[small] = 0.45 * base[small] + 0.55 * colors[index]
    buffer = io.BytesIO()
    Image.fromarray(base.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def preview_relpath(artifact: str) -> str:
    """The preview written next to a plate's mask artifact (``masks-00003.parquet`` -> ``preview-00003.png``)."""
    return artifact.replace("masks-", "preview-", 1).removesuffix(".parquet") + ".png"


def mask_summary(pair: SealedPair) -> dict[str, Any]:
    """Mask count and coverage (union area / plate area) read back from the sealed artifact."""
    from pycocotools import mask as mask_utils

    table = pq.read_table(pair.artifact_path, columns=["rle_counts", "rle_size"])
    rles = [
        {"size": size, "counts": counts.encode("ascii")}
        for counts, size in zip(table.column("rle_counts").to_pylist(), table.column("rle_size").to_pylist())
    ]
    if not rles:
        return {"mask_count": 0, "coverage": 0.0}
    height, width = rles[0]["size"]
    union = mask_utils.merge(rles, intersect=False)
    return {"mask_count": len(rles), "coverage": round(float(mask_utils.area(union)) / (height * width), 6)}


class SamSession:
    batch_size = 1  # one plate per generate(); its decode overlaps the previous plate's masks
    run_kind = "sam-masks"
    code_version = ADAPTER_VERSION

    def __init__(self, generator: MaskGenerator, max_pixels: int):
        self.instrument = generator
        self.store_key = generator.pin.key
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"generator": self.instrument.describe()["generator"], "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> tuple[Image.Image, np.ndarray | None]:
        return load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        generator = self.instrument
        outputs = []
        for plate, (image, opaque) in batch:
            masks = generator.generate(image, opaque)
            rows = mask_rows(
                masks, plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=generator.instrument.id,
                model_sha=generator.pin.sha, pin_key=generator.pin.key, preprocess_tag=generator.preprocess_tag,
                run_id=run.run_id,
            )  # fmt: skip
            artifact = run.write_table("masks", mask_table(rows))
            run.write_bytes(preview_relpath(artifact.path), preview_png(image, [m.mask for m in masks]))
            outputs.append(PlateOutput(plate, generator.preprocess_tag, [row["record_id"] for row in rows], artifact))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        preview = pair.artifact_path.parent / preview_relpath(pair.artifact)
        return {
            **mask_summary(pair),
            "generator": Json(self.instrument.describe()["generator"]),
            "preview": preview,
            "preview_image": Markdown(inline_png(f"masks over {pair.plate_id}", preview)),
        }


class SamProducer:
    asset_name = "sam_masks"
    pins_dimension = "sam_pins"
    group = GROUP_SEGMENTATION
    description = (
        "Segment Anything automatic masks (class-agnostic region proposals), one Parquet of COCO RLE mask "
        "records and a PNG preview per plate × pinned SAM model. Every generator parameter is in the "
        "preprocess tag and the run manifest."
    )
    code_version = ADAPTER_VERSION
    settings_type = GeneratorSettings
    check_descriptions = MASK_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = False

    def open(self, pin_key: str, settings: GeneratorSettings, inputs: StepInputs) -> SamSession:
        return SamSession(inputs.instruments.mask_generator(pin_key, settings), inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return check_mask_pairs(pairs, sizes)
