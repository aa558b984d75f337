"""The plate catalog asset, the plate files source and the sensor that keeps plate and pin
partitions (and the plate files' data versions) in sync."""


import hashlib
import json
import warnings
from pathlib import Path

import dagster as dg

from awb_dagster.constants import (
    DETECTION_FAMILIES,
    EMBEDDING_FAMILIES,
    GROUNDING_FAMILIES,
    GROUP_PLATES,
    PLATE_FILES_KEY,
    PLATES_PARTITIONS_NAME,
)
from awb_dagster.instance import fail_runs_of_dead_processes
from awb_dagster.partitions import (
    box_mask_pins_partitions,
    pins_partition_families,
    pins_partitions_name,
    plates_partitions,
    segment_pins_partitions,
    tile_pins_partitions,
)
from awb_dagster.provenance.records import box_mask_pin_key, segment_pin_key
from awb_dagster.plates.catalog import PlateCatalog, ScanResult
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.resources import AwbHome


def scan_plates(home: AwbHome, dirs: list[Path] | None = None) -> tuple[PlateCatalog, ScanResult]:
    """Scan ``dirs`` plus every folder registered before; save the catalog atomically, under its
    lock (a concurrent ``awb plates add`` or sensor tick waits, then scans the saved catalog)."""
    with PlateCatalog.updating(home.paths.catalog) as catalog:
        folders = [*map(str, (Path(d).resolve() for d in dirs or ())), *catalog.sources]
        result = catalog.scan([Path(f) for f in dict.fromkeys(folders)], max_pixels=home.max_pixels)
    return catalog, result


def wanted_partition_keys(home: AwbHome) -> dict[str, list[str]]:
    """Every plate of the catalog and every pin ever locked, by dynamic partitions name."""
    wanted: dict[str, list[str]] = {PLATES_PARTITIONS_NAME: list(home.catalog().plates)}
    lock = PinLock.load(home.paths.lock)
    registry = Registry.load(lock_path=home.paths.lock)
    for name, families in pins_partition_families.items():
        wanted[name] = [
            pin.key
            for family in families
            for entry in registry.family(family)
            for pin in lock.pins_for(entry.instrument.id)
        ]
    # Region embeddings: tiles per embedding pin, segments per (embedding pin, SAM pin).
    embedding_pins = [key for family in EMBEDDING_FAMILIES for key in wanted[pins_partitions_name(family)]]
    wanted[tile_pins_partitions.name] = embedding_pins
    wanted[segment_pins_partitions.name] = [
        segment_pin_key(embedding, sam) for embedding in embedding_pins for sam in wanted[pins_partitions_name("sam")]
    ]
    # Box-prompted masks per (detector pin, SAM pin: SamModel family only), and their segments.
    detector_pins = [key for family in (*DETECTION_FAMILIES, *GROUNDING_FAMILIES) for key in wanted[pins_partitions_name(family)]]
    sam_pins = [pin.key for entry in registry.family("sam") for pin in lock.pins_for(entry.instrument.id)]
    box_keys = [box_mask_pin_key(detector, sam) for detector in detector_pins for sam in sam_pins]
    wanted[box_mask_pins_partitions.name] = box_keys
    wanted[segment_pins_partitions.name] += [segment_pin_key(e, box) for e in embedding_pins for box in box_keys]
    return wanted


def sync_partitions(instance: dg.DagsterInstance, home: AwbHome) -> dict[str, list[str]]:
    """Add plate and pin keys the instance does not know yet. Never deletes a key:
    old pins and plates keep their history."""
    added: dict[str, list[str]] = {}
    for name, keys in wanted_partition_keys(home).items():
        known = set(instance.get_dynamic_partitions(name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(name, new)
            added[name] = new
    return added


@dg.asset(
    group_name=GROUP_PLATES,
    description="The plate catalog: every registered plate with sha256, size, format and color "
    "mode, plus the files rejected by the last scan and why.",
    kinds={"json"},
)
def plate_catalog(context: dg.AssetExecutionContext, home: AwbHome) -> dg.MaterializeResult:
    catalog, result = scan_plates(home)
    added = sync_partitions(context.instance, home)
    context.log.info(result.summary())
    rows = [
        dg.TableRecord(
            {"plate_id": p.plate_id, "sha256": p.sha256, "size": f"{p.width}x{p.height}", "mode": p.mode, "path": str(p.path)}
        )
        for p in catalog.plates.values()
    ]
    rejected = [dg.TableRecord({"path": r.path, "reason": r.reason}) for r in result.rejected]
    return dg.MaterializeResult(
        metadata={
            "plates": len(catalog.plates),
            "added": len(result.added),
            "updated": len(result.updated),
            "rejected": len(result.rejected),
            "catalog": dg.MetadataValue.path(str(catalog.path)),
            "plate_table": dg.MetadataValue.table(
                rows,
                schema=dg.TableSchema.from_name_type_dict(
                    {"plate_id": "string", "sha256": "string", "size": "string", "mode": "string", "path": "string"}
                ),
            ),
            "rejections": dg.MetadataValue.table(
                rejected, schema=dg.TableSchema.from_name_type_dict({"path": "string", "reason": "string"})
            ),
            "new_partitions": dg.MetadataValue.json(added),
        }
    )


def _observe_plate_files(home: AwbHome) -> dg.DataVersionsByPartition:
    versions = {plate.plate_id: dg.DataVersion(plate.sha256) for plate in home.catalog().plates.values()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # the way to version partitions of a source
        return dg.DataVersionsByPartition(versions)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # observable source assets are beta in 1.13
    plate_files = dg.observable_source_asset(
        name=PLATE_FILES_KEY,
        partitions_def=plates_partitions,
        group_name=GROUP_PLATES,
        description="The bytes of each registered plate, as the catalog last hashed them: one "
        "partition per plate, data version = sha256. Family assets depend on it plate-wise, so a "
        "plate whose bytes changed shows its embeddings stale and automation re-embeds it.",
    )(_observe_plate_files)

observe_plate_files_job = dg.define_asset_job(
    "observe_plate_files",
    selection=dg.AssetSelection.keys(PLATE_FILES_KEY),
    description="Records each plate's sha256 as the data version of its plate_files partition.",
)


def catalog_digest(catalog: PlateCatalog) -> str:
    """One sha256 over every (plate id, plate sha256): changes whenever any plate's bytes do."""
    pairs = sorted((plate.plate_id, plate.sha256) for plate in catalog.plates.values())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


@dg.sensor(
    description="Rescans the registered plate folders and the pin lock; registers new plate and "
    "pin partitions, and observes plate_files when any plate was added or changed. Marks failed "
    "the runs of `awb run` processes that died (freeing their gpu slot).",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job=observe_plate_files_job,
)
def plate_and_pin_sensor(context: dg.SensorEvaluationContext, home: AwbHome) -> dg.SensorResult:
    # The daemon's run monitoring cannot see an `awb run` process die: its runs are failed here
    # (their gpu slot freed) on the first tick after, so the UI's runs do not wait for them.
    for run_id in fail_runs_of_dead_processes(context.instance):
        context.log.warning(f"dagster run {run_id}: its awb process is gone; marked failed, its gpu slot freed")
    catalog, result = scan_plates(home)
    requests = [
        dg.AddDynamicPartitionsRequest(name, keys)
        for name, keys in wanted_partition_keys(home).items()
        if keys
    ]
    message = result.summary()
    if result.rejected:
        message += "; rejected: " + "; ".join(f"{r.path}: {r.reason}" for r in result.rejected)
    digest = catalog_digest(catalog)
    if digest == context.cursor:
        return dg.SensorResult(dynamic_partitions_requests=requests, skip_reason=dg.SkipReason(message))
    context.log.info(f"{message}; the catalog changed: observing {PLATE_FILES_KEY}")
    # No run key: a plate changed back to earlier bytes must be observed again.
    return dg.SensorResult(run_requests=[dg.RunRequest()], dynamic_partitions_requests=requests, cursor=digest)
