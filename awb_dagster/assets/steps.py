"""What every plate × pin asset step shares: splitting the step's partition keys by pin,
per-partition metadata, asset check results, and the seal-then-report loop of assets that
process one plate at a time (``sam_masks``, ``semantic_segmentation``).
"""

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

import dagster as dg

from awb_dagster.constants import PIN_DIMENSION, PLATE_DIMENSION
from awb_dagster.plates.catalog import Plate
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.store import OpenRun, SealedPair
from awb_dagster.resources import AwbHome


def split_keys(
    partitions_def: dg.MultiPartitionsDefinition, keys: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """Partition keys of this step grouped by pin, as (partition key, plate id)."""
    by_pin: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        dims = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        by_pin[dims[PIN_DIMENSION]].append((key, dims[PLATE_DIMENSION]))
    return by_pin


def add_partition_metadata(
    context: dg.AssetExecutionContext, metadata_by_key: dict[str, dict[str, Any]]
) -> None:
    """Attach metadata to each partition of this step's range.

    ``context.add_asset_metadata(partition_key=...)`` re-resolves the whole partition range
    from the instance on every call to validate the key: O(n) queries per call, O(n²) per
    range run (about 20 ms a partition at 200 plates on SQLite). The keys here come from
    ``context.partition_keys``, so they are valid by construction and are added to the
    step's metadata accumulator directly; if Dagster's internals change shape, this falls
    back to the public call.
    """
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    if accumulator is None or not hasattr(accumulator, "with_additional_asset_metadata"):
        for key, metadata in metadata_by_key.items():
            context.add_asset_metadata(metadata, partition_key=key)
        return
    targeted = set(context.partition_keys)
    for key, metadata in metadata_by_key.items():
        if key not in targeted:
            raise dg.DagsterInvariantViolationError(f"partition {key} is not targeted by this step")
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=context.assets_def.key, metadata=metadata, partition_key=key
        )
    step._metadata_accumulator = accumulator


def plate_metadata(plate: Plate) -> dict[str, Any]:
    return {
        "plate_id": plate.plate_id,
        "sha256": plate.sha256,
        "source_paths": list(plate.source_paths),
        "width": plate.width,
        "height": plate.height,
        "format": plate.format,
        "mode": plate.mode,
    }


_MAX_FAILURE_ROWS = 100  # rows in a check's metadata table; `failing` counts all


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """One asset check result over this step's partitions; the description names the first ten
    failing records (or files), the metadata table the first hundred, ``failing`` counts all."""
    failures = outcome.failures
    rows = [
        dg.TableRecord(
            {"artifact": f.artifact, "record_id": f.record_id, "plate_id": f.plate_id, "detail": f.detail}
        )
        for f in failures[:_MAX_FAILURE_ROWS]
    ]
    named = sorted({f.record_id or f.artifact for f in failures})
    listed = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        description=f"{len(failures)} of {outcome.checked} failing: {listed}" if failures else None,
        metadata={
            "checked": outcome.checked,
            "failing": len(failures),
            "failures": dg.MetadataValue.table(
                rows,
                schema=dg.TableSchema.from_name_type_dict(
                    {"artifact": "string", "record_id": "string", "plate_id": "string", "detail": "string"}
                ),
            ),
        },
    )




class PlateInstrument(Protocol):
    """A loaded instrument that processes one plate at a time at one pin."""

    pin: Any
    preprocess_tag: str

    def describe(self) -> dict[str, Any]: ...


def sealed_plate_step(
    context: dg.AssetExecutionContext,
    home: AwbHome,
    *,
    load: Callable[[str], PlateInstrument],
    force: bool,
    kind: str,
    code_version: str,
    run_config: Callable[[PlateInstrument], dict[str, Any]],
    process: Callable[[PlateInstrument, OpenRun, list[Plate]], list[str]],
    partition_metadata: Callable[[PlateInstrument, SealedPair, bool], dict[str, Any]],
    verb: str,
) -> list[SealedPair]:
    """Per pin of the step: load the instrument once, ``process`` the plates not yet sealed
    under its preprocess tag into one new sealed run, then attach ``partition_metadata`` to
    every partition with a sealed pair. ``process`` returns one failure line per plate it
    could not handle; the others stay sealed, and the step then fails naming them all.
    Returns the sealed pairs of the step's partitions, for the asset checks."""
    catalog, store = home.catalog(), home.store()
    problems: list[str] = []
    checked: list[SealedPair] = []
    for pin_key, keyed_plates in split_keys(context.assets_def.partitions_def, context.partition_keys).items():
        instrument = load(pin_key)
        tag = instrument.preprocess_tag
        sealed = {} if force else store.sealed_pairs(pin_key)
        todo: list[Plate] = []
        for _, plate_id in keyed_plates:
            plate = catalog.plates.get(plate_id)
            if plate is None:
                problems.append(f"{plate_id}: not in the plate catalog {catalog.path}")
            elif (plate_id, plate.sha256, tag) not in sealed:
                todo.append(plate)
        context.log.info(f"{pin_key}: {len(keyed_plates)} partitions, {len(todo)} to process")
        run = None
        if todo:
            run = store.open_run(
                kind=kind,
                dagster_run_id=context.run_id,
                code_version=code_version,
                device=str(instrument.device),
                config={**run_config(instrument), "max_pixels": home.max_pixels,
                        "dtype": str(instrument.dtype).removeprefix("torch.")},
            )  # fmt: skip
            run.add_instrument(instrument.describe())
            problems.extend(process(instrument, run, todo))
            manifest = run.seal()
            context.log.info(f"{pin_key}: sealed run {manifest.run_id} at {manifest.run_dir}")
        sealed = store.sealed_pairs(pin_key)
        metadata_by_key = {}
        for key, plate_id in keyed_plates:
            plate = catalog.plates.get(plate_id)
            pair = sealed.get((plate_id, plate.sha256, tag)) if plate else None
            if pair is None:
                continue
            metadata_by_key[key] = partition_metadata(instrument, pair, run is None or pair.run_id != run.run_id)
            checked.append(pair)
        add_partition_metadata(context, metadata_by_key)
    if problems:
        raise dg.Failure(
            description=f"{len(problems)} plate(s) could not be {verb}; the others are sealed and a "
            "retry skips them:\n" + "\n".join(problems),
        )
    return checked


def check_results(context: dg.AssetExecutionContext, outcomes: dict[str, CheckOutcome]) -> list[dg.AssetCheckResult]:
    """Results of the checks this step was asked to run."""
    selected = {key.name for key in context.selected_asset_check_keys}
    return [check_result(outcome) for name, outcome in outcomes.items() if name in selected]
