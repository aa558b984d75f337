"""Materialize family assets through Dagster from the command line, as few runs as the
partition order allows (one run per contiguous range of plates for one pin)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

from awb_dagster.assets.factory import job_name

from awb_dagster.constants import PIN_DIMENSION, PLATE_DIMENSION, PLATES_PARTITIONS_NAME




@dataclass(frozen=True)
class RangeRun:
    pin_key: str
    plate_ids: tuple[str, ...]
    dagster_run_id: str
    success: bool


def contiguous_ranges(ordered: Sequence[str], chosen: Sequence[str]) -> list[list[str]]:
    """Split ``chosen`` into runs of keys that are adjacent in ``ordered``."""
    wanted = set(chosen)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted:
            current.append(key)
        elif current:
            ranges.append(current)
            current = []
    if current:
        ranges.append(current)
    return ranges


def _multi_key(pin_key: str, plate_id: str) -> str:
    return str(dg.MultiPartitionKey({PIN_DIMENSION: pin_key, PLATE_DIMENSION: plate_id}))


def materialize_family(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    family: str,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    force: bool = False,
    log_level: str = "INFO",
    on_run: Callable[[RangeRun], None] | None = None,
) -> list[RangeRun]:
    """Run ``<family>_embeddings`` for one pin over ``plate_ids`` (default: all plates)."""
    return materialize_pin_ranges(
        defs, instance, job_name(f"{family}_embeddings"), f"{family}_embeddings", {"force": force}, pin_key, plate_ids,
        log_level=log_level, on_run=on_run,
    )  # fmt: skip


def materialize_masks(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``sam_masks`` for one SAM pin over ``plate_ids`` (default: all plates); ``config`` is
    the asset's run config (generator settings, ``force``)."""
    return materialize_pin_ranges(
        defs, instance, job_name("sam_masks"), "sam_masks", config or {}, pin_key, plate_ids, log_level=log_level
    )


def materialize_semantic(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``semantic_segmentation`` for one Mask2Former pin over ``plate_ids`` (default: all
    plates); ``config`` is the asset's run config (``force``, ``max_label_side``)."""
    return materialize_pin_ranges(
        defs, instance, job_name("semantic_segmentation"), "semantic_segmentation", config or {}, pin_key, plate_ids, log_level=log_level
    )


def materialize_regions(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    scope: str,
    key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``segment_embeddings`` (``key`` = ``<embedding pin>~<sam pin>``) or ``tile_embeddings``
    (``key`` = an embedding pin) over ``plate_ids`` (default: all plates); ``config`` is the
    asset's run config (crop policy or tiling, ``force``)."""
    asset = {"segment": "segment_embeddings", "tile": "tile_embeddings"}[scope]
    return materialize_pin_ranges(defs, instance, job_name(asset), asset, config or {}, key, plate_ids, log_level=log_level)


def materialize_pin_ranges(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    op_name: str,
    op_config: dict,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    log_level: str = "INFO",
    on_run: Callable[[RangeRun], None] | None = None,
) -> list[RangeRun]:
    """Run the plate × pin asset behind ``job_name`` for one pin, one run per contiguous plate range."""
    ordered = instance.get_dynamic_partitions(PLATES_PARTITIONS_NAME)
    unknown = sorted(set(plate_ids or ()) - set(ordered))
    if unknown:
        raise ValueError(f"not registered plates: {', '.join(unknown)} (register with `awb plates add DIR`)")
    job = defs.resolve_job_def(job_name)
    results = []
    for plates in contiguous_ranges(ordered, plate_ids or ordered):
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": _multi_key(pin_key, plates[0]),
                "dagster/asset_partition_range_end": _multi_key(pin_key, plates[-1]),
            },
            run_config={
                "ops": {op_name: {"config": op_config}},
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            raise_on_error=False,
        )
        run = RangeRun(pin_key, tuple(plates), result.run_id, result.success)
        results.append(run)
        if on_run:
            on_run(run)
    return results


ATLAS_ASSET_NAMES = ("atlas", "ensemble_disagreement", "topology_report")


def materialize_atlas(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    config: dict[str, dict] | None = None,
    *,
    assets: Sequence[str] = ATLAS_ASSET_NAMES,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """Materialize ``atlas``, ``ensemble_disagreement`` and ``topology_report`` (or the named
    ones of them) in one run; ``config`` maps an asset name to its config (``{"atlas": {"k": 3}}``)."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(name) for name in assets],
        run_config={
            "ops": {name: {"config": settings} for name, settings in (config or {}).items()},
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        raise_on_error=False,
    )
