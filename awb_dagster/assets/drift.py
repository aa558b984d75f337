"""Pin drift report: for every embedding model with two or more pins, how far each new pin
moved the same plates (per-plate cosine between consecutive pins, summary statistics, the
plates that moved most), as tables and a plot in the UI."""

from typing import Any

import dagster as dg

from awb_dagster.assets.corpus import CORPUS_AUTOMATION, FAMILY_ASSETS, FAMILY_ORDER
from awb_dagster.atlas.drift import PinDrift, pin_drift
from awb_dagster.atlas.plots import drift_png, markdown_image
from awb_dagster.atlas.spaces import Space, load_space
from awb_dagster.constants import GROUP_ATLAS
from awb_dagster.registry.model import Registry
from awb_dagster.resources import AwbHome

DRIFT_CODE_VERSION = "pin-drift-1"


class PinDriftConfig(dg.Config):
    top_n: int = 20  # plates listed per pin pair, lowest cosine first


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord(row) for row in rows], schema=dg.TableSchema.from_name_type_dict(columns)
    )


@dg.asset(
    group_name=GROUP_ATLAS,
    description="For every embedding model with two or more pins (retired ones included): the "
    "cosine of each plate's embedding between consecutive pins, summary statistics per pin pair, "
    "the plates that moved most, and a plot. Only plates embedded under both pins with the same "
    "bytes are compared.",
    deps=FAMILY_ASSETS,
    code_version=DRIFT_CODE_VERSION,
    automation_condition=CORPUS_AUTOMATION,
    kinds={"numpy"},
)
def pin_drift_report(context: dg.AssetExecutionContext, config: PinDriftConfig, home: AwbHome) -> dg.MaterializeResult:
    registry = Registry.load(lock_path=home.paths.lock)
    store = home.store()
    plates = {plate.plate_id: plate.sha256 for plate in home.catalog().plates.values()}
    drifts: list[PinDrift] = []
    skipped: list[dict[str, Any]] = []
    sources: set[str] = set()
    for family in FAMILY_ORDER:
        for entry in registry.family(family):
            pins = registry.lock.pins_for(entry.instrument.id)
            if len(pins) < 2:
                continue
            spaces: list[Space] = []
            for pin in pins:
                space, _ = load_space(store, pin.key, "plate", plates)
                if space is None:
                    skipped.append({"model_id": entry.instrument.id, "pin": pin.key, "reason": "no sealed embeddings of the catalog's plates"})
                else:
                    spaces.append(space)
                    sources.update(source.run_id for source in space.sources)
            for before, after in zip(spaces, spaces[1:]):
                try:
                    drifts.append(pin_drift(entry.instrument.id, before, after))
                except ValueError as exc:
                    skipped.append({"model_id": entry.instrument.id, "pin": f"{before.pin_key} -> {after.pin_key}", "reason": str(exc)})
    for row in skipped:
        context.log.warning(f"{row['model_id']} {row['pin']}: {row['reason']}")
    summaries = [drift.summary() for drift in drifts]
    moved = [
        {"model_id": d.model_id, "pins": d.label, "rank": rank, "plate_id": plate_id, "cosine": round(cosine, 6)}
        for d in drifts
        for rank, (plate_id, cosine) in enumerate(d.most_moved(config.top_n), start=1)
    ]
    per_plate = [
        {"model_id": d.model_id, "pins": d.label, "plate_id": plate_id, "cosine": round(float(cosine), 6)}
        for d in drifts
        for plate_id, cosine in zip(d.plate_ids, d.cosines)
    ]
    plot = markdown_image(drift_png(drifts), "per-plate cosine between pins") if drifts else "no model has two pins with embeddings"
    context.log.info(f"{len(drifts)} pin pair(s) compared; {len(skipped)} skipped")
    return dg.MaterializeResult(
        metadata={
            "pin_pairs": len(drifts),
            "summary": _table(
                summaries,
                {"model_id": "string", "from_pin": "string", "to_pin": "string", "plates": "int",
                 "mean": "float", "median": "float", "p05": "float", "min": "float", "max": "float"},
            ),  # fmt: skip
            "most_moved": _table(
                moved, {"model_id": "string", "pins": "string", "rank": "int", "plate_id": "string", "cosine": "float"}
            ),
            "per_plate": _table(per_plate, {"model_id": "string", "pins": "string", "plate_id": "string", "cosine": "float"}),
            "plot": dg.MetadataValue.md(plot),
            "skipped": _table(skipped, {"model_id": "string", "pin": "string", "reason": "string"}),
            "source_runs": dg.MetadataValue.json(sorted(sources)),
        }
    )
