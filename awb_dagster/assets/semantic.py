"""Semantic segmentation (seed 5.3): a class map and a class-area table per plate × Mask2Former pin.

Kept apart from the class-agnostic ``sam_masks``: its own asset, group, pins partition and
sealed runs, because its labels are semantics asserted by a model trained on scene photographs
(ADE20K), not region proposals. Same shape as ``sam_masks`` otherwise: one step may cover many
partitions (single-run backfills), the segmenter loads once per (pin, settings) and step, each
plate's class map PNG, class-area Parquet and preview PNG go into one sealed run per pin, and each
(plate, pin) partition gets its own provenance metadata. The real checkpoint's license is
``other``: it runs only with the license opt-in (``AWB_LICENSE_OPT_IN``).
"""

import base64
import hashlib
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.assets.steps import check_results, plate_metadata, sealed_plate_step
from awb_dagster.assets.automation import embedding_automation_condition
from awb_dagster.constants import GPU_POOL, GROUP_SEMANTIC, PIN_DIMENSION, PLATE_FILES_KEY
from awb_dagster.plates.imaging import load_plate
from awb_dagster.instruments.semantic import (
    ADAPTER_VERSION,
    ClassMap,
    SegmenterSettings,
    SemanticSegmenter,
    class_map_png,
)
from awb_dagster.partitions import plate_pin_partitions
from awb_dagster.provenance.rows import class_area_rows
from awb_dagster.plates.catalog import Plate
from awb_dagster.plates.imaging import PlateError
from awb_dagster.provenance.checks import CLASS_MAP_CHECK_DESCRIPTIONS, check_class_map_pairs
from awb_dagster.provenance.records import class_area_table
from awb_dagster.provenance.store import OpenRun, SealedPair
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry.model import Registry, RegistryError
from awb_dagster.resources import AwbHome, InstrumentsResource

SEMANTIC_ASSET = "semantic_segmentation"
FAMILY = "mask2former"
PREVIEW_MAX_SIDE = 256  # the preview is inlined in the event log: keep it small
TOP_CLASSES = 10  # rows of the per-partition top classes table

_DEFAULTS = SegmenterSettings()


class SemanticRunConfig(dg.Config):
    """Semantic segmentation settings and the memory bound of the post-processing."""

    force: bool = False  # recompute (plate, pin) pairs that are already in a sealed run
    max_label_side: int = _DEFAULTS.max_label_side

    def settings(self) -> SegmenterSettings:
        return SegmenterSettings(max_label_side=self.max_label_side)


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


def _top_classes(rows: list[dict[str, Any]], colors: dict[int, tuple[int, int, int]]) -> dg.TableMetadataValue:
    records = [
        dg.TableRecord(
            {
                "class_id": row["class_id"],
                "label": row["label"],
                "pixel_count": row["pixel_count"],
                "area_fraction": round(row["area_fraction"], 6),
                "color": "#{:02x}{:02x}{:02x}".format(*colors.get(row["class_id"], (0, 0, 0))),
            }
        )
        for row in rows[:TOP_CLASSES]
    ]
    return dg.MetadataValue.table(
        records,
        schema=dg.TableSchema.from_name_type_dict(
            {"class_id": "int", "label": "string", "pixel_count": "int", "area_fraction": "float", "color": "string"}
        ),
    )


def _partition_metadata(segmenter: SemanticSegmenter, pair: SealedPair, *, reused: bool, home: str) -> dict[str, Any]:
    rows = pq.read_table(pair.artifact_path).to_pylist()  # most pixels first
    class_map_relpath, preview_relpath = artifact_relpaths(pair.artifact)
    preview = pair.artifact_path.parent / preview_relpath
    encoded = base64.b64encode(preview.read_bytes()).decode("ascii")
    colors = class_colors(segmenter.labels, segmenter.transparent_id)
    model_rows = [row for row in rows if row["class_id"] != segmenter.transparent_id]
    return {
        "class_count": len(model_rows),
        "top_classes": _top_classes(rows, colors),
        "transparent_fraction": round(
            sum(r["area_fraction"] for r in rows if r["class_id"] == segmenter.transparent_id), 6
        ),
        "record_ids": len(pair.record_ids),
        "plate_id": pair.plate_id,
        "plate_sha256": pair.plate_sha256,
        "model_id": segmenter.instrument.id,
        "model_sha": segmenter.pin.sha,
        "pin": pair.pin_key,
        "license": segmenter.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "segmenter": dg.MetadataValue.json(segmenter.describe()["segmenter"]),
        "class_map": dg.MetadataValue.path(str(pair.artifact_path.parent / class_map_relpath)),
        "class_map_sha256": rows[0]["class_map_sha256"] if rows else "",
        "class_map_dtype": str(segmenter.class_map_dtype),
        "artifact": dg.MetadataValue.path(str(pair.artifact_path)),
        "artifact_sha256": pair.artifact_sha256,
        "preview": dg.MetadataValue.path(str(preview)),
        "preview_image": dg.MetadataValue.md(f"![classes over {pair.plate_id}](data:image/png;base64,{encoded})"),
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if reused else "computed",
        "lineage": dg.MetadataValue.md(f"`awb lineage {pair.record_ids[0]} --home {home}`"),
    }


def _segment(
    context: dg.AssetExecutionContext, segmenter: SemanticSegmenter, run: OpenRun, plates: list[Plate], max_pixels: int
) -> list[str]:
    """Class maps of ``plates`` into ``run``; returns the failures, one line per plate."""
    failures: list[str] = []
    colors = class_colors(segmenter.labels, segmenter.transparent_id)
    started = time.perf_counter()
    for done, plate in enumerate(plates, start=1):
        try:
            image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        except PlateError as exc:  # a bad plate fails its own partition, not the step's others
            reason = f"{type(exc).__name__}: {exc}"
            failures.append(f"{plate.plate_id}: {reason}")
            run.add_failure(plate_id=plate.plate_id, pin_key=segmenter.pin.key, reason=reason)
            continue
        class_map = segmenter.segment(image, opaque)
        png = class_map_png(class_map.class_ids)
        part = sum(1 for output in run.outputs if output.path.startswith("class-areas-"))
        class_map_relpath, preview_relpath = artifact_relpaths(f"class-areas-{part:05d}.parquet")
        rows = class_area_rows(
            class_map,
            plate_id=plate.plate_id,
            plate_sha256=plate.sha256,
            model_id=segmenter.instrument.id,
            model_sha=segmenter.pin.sha,
            pin_key=segmenter.pin.key,
            preprocess_tag=segmenter.preprocess_tag,
            run_id=run.run_id,
            class_map_path=class_map_relpath,
            class_map_sha256=hashlib.sha256(png).hexdigest(),
        )
        artifact = run.write_table("class-areas", class_area_table(rows))
        if artifact_relpaths(artifact.path) != (class_map_relpath, preview_relpath):
            raise RuntimeError(f"run {run.run_id}: wrote {artifact.path}, expected part {part:05d}")
        run.write_bytes(class_map_relpath, png, rows=class_map.class_ids.shape[0])
        run.write_bytes(preview_relpath, preview_png(image, class_map, colors))
        run.add_plate(plate_metadata(plate))
        run.add_pair(
            plate_id=plate.plate_id,
            plate_sha256=plate.sha256,
            pin_key=segmenter.pin.key,
            preprocess_tag=segmenter.preprocess_tag,
            record_ids=[row["record_id"] for row in rows],
            artifact=artifact,
        )
        top = ", ".join(f"{row['label']} {row['area_fraction']:.0%}" for row in rows[:3])
        context.log.info(
            f"{segmenter.pin.key}: {plate.plate_id}: {len(rows)} classes ({top}) ({done}/{len(plates)} plates)"
        )
    run.note("timing", {"plates": len(plates), "seconds": round(time.perf_counter() - started, 3)})
    return failures


def _semantic_segmentation(
    context: dg.AssetExecutionContext,
    config: SemanticRunConfig,
    home: AwbHome,
    instruments: InstrumentsResource,
) -> dg.MaterializeResult:
    settings = config.settings()
    checked = sealed_plate_step(
        context,
        home,
        load=lambda pin_key: instruments.semantic_segmenter(pin_key, settings),
        force=config.force,
        kind="semantic-segmentation",
        code_version=ADAPTER_VERSION,
        run_config=lambda segmenter: {"segmenter": segmenter.describe()["segmenter"]},
        process=lambda segmenter, run, plates: _segment(context, segmenter, run, plates, home.max_pixels),
        partition_metadata=lambda segmenter, pair, reused: _partition_metadata(segmenter, pair, reused=reused, home=home.home),
        verb="segmented",
    )
    plate_sizes = {plate.sha256: (plate.height, plate.width) for plate in home.catalog().plates.values()}
    return dg.MaterializeResult(
        metadata={"model_loads": instruments.loads},
        check_results=check_results(context, check_class_map_pairs(checked, plate_sizes)),
    )


with warnings.catch_warnings():
    # backfill_policy is marked beta in Dagster 1.13; single-run backfills are the point here.
    warnings.simplefilter("ignore", dg.BetaWarning)
    semantic_segmentation = dg.asset(
        name=SEMANTIC_ASSET,
        description="Semantic segmentation (Mask2Former, ADE20K label names): per plate × pinned model a "
        "lossless class map PNG at plate resolution, a class-area Parquet (pixels and area fraction per "
        "class, label names from the checkpoint's id2label) and a colored preview. Kept apart from the "
        "class-agnostic sam_masks. Flagged licenses (the real model's `other`) need AWB_LICENSE_OPT_IN.",
        partitions_def=plate_pin_partitions(FAMILY),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=GPU_POOL,
        group_name=GROUP_SEMANTIC,
        code_version=ADAPTER_VERSION,
        kinds={"pytorch", "parquet"},
        deps=["plate_catalog", PLATE_FILES_KEY],
        # As for the other family assets: one check evaluation per step, covering its partitions.
        check_specs=[
            dg.AssetCheckSpec(name, asset=SEMANTIC_ASSET, description=description, blocking=True)
            for name, description in CLASS_MAP_CHECK_DESCRIPTIONS.items()
        ],
    )(_semantic_segmentation)


@dataclass(frozen=True)
class PinAdmitted(dg.AutomationCondition):
    """True for the partitions whose pin's model passes the admission and license gates under
    ``license_opt_in``: automation never requests a run that the gate would fail (the real
    Mask2Former's `other` license runs only once opted into)."""

    lock_path: str
    license_opt_in: tuple[str, ...]

    @property
    def name(self) -> str:
        return "pin_admitted"

    @property
    def description(self) -> str:
        return f"The partition's model is admitted with license opt-in {list(self.license_opt_in)}"

    @property
    def requires_cursor(self) -> bool:
        return False

    def _admits(self, registry: Registry, pin: Pin | None) -> bool:
        if pin is None:
            return False
        try:
            registry.require_admitted(pin.model_id, license_opt_in=self.license_opt_in)
        except RegistryError:
            return False
        return True

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        lock = PinLock.load(self.lock_path)
        registry = Registry.load(lock_path=Path(self.lock_path))
        admitted: dict[str, bool] = {}
        partitions_def = candidates.partitions_def
        keep = set()
        for key in candidates.expensively_compute_partition_keys():
            pin_key = partitions_def.get_partition_key_from_str(key).keys_by_dimension[PIN_DIMENSION]
            if pin_key not in admitted:
                admitted[pin_key] = self._admits(registry, lock.find_key(pin_key))
            if admitted[pin_key]:
                keep.add(key)
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(keep))


def with_semantic_automation(
    lock_path: Path | str, cron: str, license_opt_in: list[str]
) -> list[dg.AssetsDefinition]:
    """``semantic_segmentation`` with the family automation condition, restricted to admitted pins."""
    condition = embedding_automation_condition(lock_path, cron) & PinAdmitted(str(lock_path), tuple(license_opt_in))
    return dg.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=condition), [semantic_segmentation]
    )
