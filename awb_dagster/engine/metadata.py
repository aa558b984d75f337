"""The provenance every partition shows, built in one place for every family: which records,
which plate bytes, which model at which sha, which preprocessing, which artifact and run.
Family-specific values come from the session and are added after these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from awb_dagster.engine.core import PartitionReport
from awb_dagster.engine.producer import PinSession
from awb_dagster.engine.values import Markdown


def partition_metadata(session: PinSession, report: PartitionReport, home: str) -> dict[str, Any]:
    pair = report.pair
    instrument = session.instrument
    first = pair.record_ids[0] if pair.record_ids else None
    return {
        "record_id": first or "",
        "records": len(pair.record_ids),
        "plate_id": pair.plate_id,
        "plate_sha256": pair.plate_sha256,
        "model_id": instrument.instrument.id,
        "model_sha": instrument.pin.sha,
        "pin": instrument.pin.key,
        "license": instrument.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "artifact": Path(pair.artifact_path),
        "artifact_sha256": pair.artifact_sha256,
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if report.reused else "computed",
        "lineage": Markdown(f"`awb lineage {first} --home {home}`" if first else "no records for this plate"),
        **session.partition_metadata(pair, report.facts),
    }
