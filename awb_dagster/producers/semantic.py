"""Semantic segmentation (seed 5.3): a class map and a class-area table per plate × Mask2Former pin.

Kept apart from the class-agnostic ``sam_masks``: its own asset, group, pins partition and
sealed runs, because its labels are semantics asserted by a model trained on scene photographs
(ADE20K), not region proposals. Per plate: a lossless class map PNG at plate resolution, a
class-area Parquet and a colored preview. The real checkpoint's license is ``other``: it runs
only with the license opt-in (``AWB_LICENSE_OPT_IN``), and automation requests only admitted pins.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_SEMANTIC
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json, Markdown, Table
from awb_dagster.instruments.semantic import ADAPTER_VERSION, ClassMap, SegmenterSettings, SemanticSegmenter, class_map_png
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.previews import inline_png
from awb_dagster.provenance.checks import CLASS_MAP_CHECK_DESCRIPTIONS, CheckOutcome, check_class_map_pairs
from awb_dagster.provenance.records import class_area_table
from awb_dagster.provenance.rows import class_area_rows
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair

SEMANTIC_ASSET = "semantic_segmentation"
FAMILY = "mask2former"
PREVIEW_MAX_SIDE = 256  # the preview is inlined in the event log: keep it small
TOP_CLASSES = 10  # rows of the per-partition top classes table


def class_colors(labels: dict[int, str], transparent_id: int) -> dict[int, tuple[int, int, int]]:
    """A fixed color per class id (the same on every plate and run); transparent is mid gray."""
    top = max((i for i in labels if i != transparent_id), default=0)
    palette = np.random.default_rng(0).integers(40, 256, size=(top + 1, 3))
    colors = {i: tuple(int(c) for c in palette[i]) for i in labels if i != transparent_id}
    colors[transparent_id] = (128, 128, 128)
    return colors


def preview_png(
    image: Image.Image, class_map: ClassMap, colors: dict[int, tuple[int, int, int]], max_side: int = PREVIEW_MAX_SIDE
) -> bytes:
    """The class map blended over the plate, as PNG bytes at most ``max_side`` on the longest side."""
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    ids = np.asarray(Image.fromarray(class_map.class_ids).resize(size, Image.Resampling.NEAREST))
    lookup = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
    for class_id, color in colors.items():
        if class_id < len(lookup):
            lookup[class_id] = color
    blended = 0.45 * base + 0.55 * lookup[ids]
    buffer = io.BytesIO()
    Image.fromarray(blended.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def artifact_relpaths(table_relpath: str) -> tuple[str, str]:
    """The class map and preview written beside a plate's class-area table
    (``class-areas-00003.parquet`` -> ``class-map-00003.png``, ``preview-00003.png``)."""
    part = table_relpath.removeprefix("class-areas-").removesuffix(".parquet")
    return f"class-map-{part}.png", f"preview-{part}.png"


def top_classes(rows: list[dict[str, Any]], colors: dict[int, tuple[int, int, int]]) -> Table:
    return Table(
        tuple(
            {
                "class_id": row["class_id"],
                "label": row["label"],
                "pixel_count": row["pixel_count"],
                "area_fraction": round(row["area_fraction"], 6),
                "color": "#{:02x}{:02x}{:02x}".format(*colors.get(row["class_id"], (0, 0, 0))),
            }
            for row in rows[:TOP_CLASSES]
        ),
        {"class_id": "int", "label": "string", "pixel_count": "int", "area_fraction": "float", "color": "string"},
    )


class SemanticSession:
    batch_size = 1
    run_kind = "semantic-segmentation"
    code_version = ADAPTER_VERSION

    def __init__(self, segmenter: SemanticSegmenter, max_pixels: int):
        self.instrument = segmenter
        self.store_key = segmenter.pin.key
        self._max_pixels = max_pixels
        self._colors = class_colors(segmenter.labels, segmenter.transparent_id)

    def run_config(self) -> dict[str, Any]:
        return {"segmenter": self.instrument.describe()["segmenter"], "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> tuple[Image.Image, np.ndarray | None]:
        return load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        return [self._segment(plate, image, opaque, run) for plate, (image, opaque) in batch]

    def _segment(self, plate: Plate, image: Image.Image, opaque: np.ndarray | None, run: OpenRun) -> PlateOutput:
        segmenter = self.instrument
        class_map = segmenter.segment(image, opaque)
        png = class_map_png(class_map.class_ids)
        part = sum(1 for output in run.outputs if output.path.startswith("class-areas-"))
        class_map_relpath, preview_relpath = artifact_relpaths(f"class-areas-{part:05d}.parquet")
        rows = class_area_rows(
            class_map, plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=segmenter.instrument.id,
            model_sha=segmenter.pin.sha, pin_key=segmenter.pin.key, preprocess_tag=segmenter.preprocess_tag,
            run_id=run.run_id, class_map_path=class_map_relpath, class_map_sha256=hashlib.sha256(png).hexdigest(),
        )  # fmt: skip
        artifact = run.write_table("class-areas", class_area_table(rows))
        if artifact_relpaths(artifact.path) != (class_map_relpath, preview_relpath):
            raise RuntimeError(f"run {run.run_id}: wrote {artifact.path}, expected part {part:05d}")
        run.write_bytes(class_map_relpath, png, rows=class_map.class_ids.shape[0])
        run.write_bytes(preview_relpath, preview_png(image, class_map, self._colors))
        top = ", ".join(f"{row['label']} {row['area_fraction']:.0%}" for row in rows[:3])
        return PlateOutput(plate, segmenter.preprocess_tag, [row["record_id"] for row in rows], artifact, {"top": top})

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        segmenter = self.instrument
        rows = pq.read_table(pair.artifact_path).to_pylist()  # most pixels first
        class_map_relpath, preview_relpath = artifact_relpaths(pair.artifact)
        preview = pair.artifact_path.parent / preview_relpath
        model_rows = [row for row in rows if row["class_id"] != segmenter.transparent_id]
        return {
            "class_count": len(model_rows),
            "top_classes": top_classes(rows, self._colors),
            "transparent_fraction": round(
                sum(r["area_fraction"] for r in rows if r["class_id"] == segmenter.transparent_id), 6
            ),
            "segmenter": Json(segmenter.describe()["segmenter"]),
            "class_map": pair.artifact_path.parent / class_map_relpath,
            "class_map_sha256": rows[0]["class_map_sha256"] if rows else "",
            "class_map_dtype": str(segmenter.class_map_dtype),
            "preview": preview,
            "preview_image": Markdown(inline_png(f"classes over {pair.plate_id}", preview)),
        }


class SemanticProducer:
    asset_name = SEMANTIC_ASSET
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_SEMANTIC
    description = (
        "Semantic segmentation (Mask2Former, ADE20K label names): per plate × pinned model a lossless class "
        "map PNG at plate resolution, a class-area Parquet (pixels and area fraction per class, label names "
        "from the checkpoint's id2label) and a colored preview. Kept apart from the class-agnostic sam_masks. "
        "Flagged licenses (the real model's `other`) need AWB_LICENSE_OPT_IN."
    )
    code_version = ADAPTER_VERSION
    settings_type = SegmenterSettings
    check_descriptions = CLASS_MAP_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = True

    def open(self, pin_key: str, settings: SegmenterSettings, inputs: StepInputs) -> SemanticSession:
        return SemanticSession(inputs.instruments.semantic_segmenter(pin_key, settings), inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return check_class_map_pairs(pairs, sizes)
