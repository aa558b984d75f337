"""Segment Anything masks (seed 5.1): class-agnostic region proposals per plate × SAM pin.

Same shape as the embedding assets: one step may cover many partitions (single-run backfills),
the generator loads once per (pin, settings), each plate's masks go to their own Parquet file
and PNG preview in one sealed run per pin, and each (plate, pin) partition gets its own
provenance metadata. A plate where no mask passes the filters is a valid, empty result.
"""

import base64
import io
import time
import warnings
from dataclasses import fields
from typing import Any

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.assets.steps import check_results, plate_metadata, sealed_plate_step
from awb_dagster.constants import GPU_POOL, GROUP_SEGMENTATION, PLATE_FILES_KEY
from awb_dagster.instruments.amg import GeneratorSettings
from awb_dagster.instruments.sam import ADAPTER_VERSION, MaskGenerator
from awb_dagster.plates.imaging import load_plate
from awb_dagster.provenance.rows import mask_rows
from awb_dagster.partitions import plate_pin_partitions
from awb_dagster.plates.catalog import Plate
from awb_dagster.plates.imaging import PlateError
from awb_dagster.provenance.checks import MASK_CHECK_DESCRIPTIONS, check_mask_pairs
from awb_dagster.provenance.records import mask_table
from awb_dagster.provenance.store import OpenRun, SealedPair
from awb_dagster.resources import AwbHome, InstrumentsResource

_DEFAULTS = GeneratorSettings()
PREVIEW_MAX_SIDE = 256  # the preview is inlined in the event log: keep it small


class SamRunConfig(dg.Config):
    """Automatic mask generation settings (segment-anything's defaults) and the memory bounds."""

    force: bool = False  # recompute (plate, pin) pairs that are already in a sealed run
    points_per_side: int = _DEFAULTS.points_per_side
    points_per_batch: int = _DEFAULTS.points_per_batch
    pred_iou_thresh: float = _DEFAULTS.pred_iou_thresh
    stability_score_thresh: float = _DEFAULTS.stability_score_thresh
    stability_score_offset: float = _DEFAULTS.stability_score_offset
    mask_threshold: float = _DEFAULTS.mask_threshold
    box_nms_thresh: float = _DEFAULTS.box_nms_thresh
    crop_n_layers: int = _DEFAULTS.crop_n_layers
    crop_nms_thresh: float = _DEFAULTS.crop_nms_thresh
    crop_overlap_ratio: float = _DEFAULTS.crop_overlap_ratio
    crop_n_points_downscale_factor: int = _DEFAULTS.crop_n_points_downscale_factor
    min_mask_region_area: int = _DEFAULTS.min_mask_region_area
    max_working_side: int = _DEFAULTS.max_working_side

    def settings(self) -> GeneratorSettings:
        return GeneratorSettings(**{f.name: getattr(self, f.name) for f in fields(GeneratorSettings)})


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


def _mask_summary(pair: SealedPair) -> dict[str, Any]:
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


def _partition_metadata(generator: MaskGenerator, pair: SealedPair, *, reused: bool, home: str) -> dict[str, Any]:
    preview = pair.artifact_path.parent / preview_relpath(pair.artifact)
    encoded = base64.b64encode(preview.read_bytes()).decode("ascii")
    return {
        **_mask_summary(pair),
        "record_ids": len(pair.record_ids),
        "plate_id": pair.plate_id,
        "plate_sha256": pair.plate_sha256,
        "model_id": generator.instrument.id,
        "model_sha": generator.pin.sha,
        "pin": pair.pin_key,
        "license": generator.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "generator": dg.MetadataValue.json(generator.describe()["generator"]),
        "artifact": dg.MetadataValue.path(str(pair.artifact_path)),
        "artifact_sha256": pair.artifact_sha256,
        "preview": dg.MetadataValue.path(str(preview)),
        "preview_image": dg.MetadataValue.md(f"![masks over {pair.plate_id}](data:image/png;base64,{encoded})"),
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if reused else "computed",
        "lineage": dg.MetadataValue.md(
            f"`awb lineage {pair.record_ids[0]} --home {home}`" if pair.record_ids else "no masks passed the filters"
        ),
    }


def _generate(
    context: dg.AssetExecutionContext, generator: MaskGenerator, run: OpenRun, plates: list[Plate], max_pixels: int
) -> list[str]:
    """Masks of ``plates`` into ``run``; returns the failures, one line per plate."""
    failures: list[str] = []
    started = time.perf_counter()
    for done, plate in enumerate(plates, start=1):
        try:
            image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        except PlateError as exc:  # a bad plate fails its own partition, not the step's others
            reason = f"{type(exc).__name__}: {exc}"
            failures.append(f"{plate.plate_id}: {reason}")
            run.add_failure(plate_id=plate.plate_id, pin_key=generator.pin.key, reason=reason)
            continue
        masks = generator.generate(image, opaque)
        rows = mask_rows(
            masks,
            plate_id=plate.plate_id,
            plate_sha256=plate.sha256,
            model_id=generator.instrument.id,
            model_sha=generator.pin.sha,
            pin_key=generator.pin.key,
            preprocess_tag=generator.preprocess_tag,
            run_id=run.run_id,
        )
        artifact = run.write_table("masks", mask_table(rows))
        run.write_bytes(preview_relpath(artifact.path), preview_png(image, [m.mask for m in masks]))
        run.add_plate(plate_metadata(plate))
        run.add_pair(
            plate_id=plate.plate_id,
            plate_sha256=plate.sha256,
            pin_key=generator.pin.key,
            preprocess_tag=generator.preprocess_tag,
            record_ids=[row["record_id"] for row in rows],
            artifact=artifact,
        )
        context.log.info(f"{generator.pin.key}: {plate.plate_id}: {len(rows)} masks ({done}/{len(plates)} plates)")
    elapsed = time.perf_counter() - started
    run.note("timing", {"plates": len(plates), "seconds": round(elapsed, 3)})
    return failures


def _sam_masks(
    context: dg.AssetExecutionContext,
    config: SamRunConfig,
    home: AwbHome,
    instruments: InstrumentsResource,
) -> dg.MaterializeResult:
    settings = config.settings()
    checked = sealed_plate_step(
        context,
        home,
        load=lambda pin_key: instruments.mask_generator(pin_key, settings),
        force=config.force,
        kind="sam-masks",
        code_version=ADAPTER_VERSION,
        run_config=lambda generator: {"generator": generator.describe()["generator"]},
        process=lambda generator, run, plates: _generate(context, generator, run, plates, home.max_pixels),
        partition_metadata=lambda generator, pair, reused: _partition_metadata(generator, pair, reused=reused, home=home.home),
        verb="segmented",
    )
    plate_sizes = {plate.sha256: (plate.height, plate.width) for plate in home.catalog().plates.values()}
    return dg.MaterializeResult(
        metadata={"model_loads": instruments.loads},
        check_results=check_results(context, check_mask_pairs(checked, plate_sizes)),
    )


with warnings.catch_warnings():
    # backfill_policy is marked beta in Dagster 1.13; single-run backfills are the point here.
    warnings.simplefilter("ignore", dg.BetaWarning)
    sam_masks = dg.asset(
        name="sam_masks",
        description="Segment Anything automatic masks (class-agnostic region proposals), one Parquet of "
        "COCO RLE mask records and a PNG preview per plate × pinned SAM model. Every generator parameter "
        "is in the preprocess tag and the run manifest.",
        partitions_def=plate_pin_partitions("sam"),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=GPU_POOL,
        group_name=GROUP_SEGMENTATION,
        code_version=ADAPTER_VERSION,
        kinds={"pytorch", "parquet"},
        deps=["plate_catalog", PLATE_FILES_KEY],
        # As for the embedding assets: one check evaluation per step, covering its partitions.
        check_specs=[
            dg.AssetCheckSpec(name, asset="sam_masks", description=description, blocking=True)
            for name, description in MASK_CHECK_DESCRIPTIONS.items()
        ],
    )(_sam_masks)
