"""The provenance every partition shows, built in one place for every family: which records,
which plate bytes, which model at which sha, which preprocessing, which artifact and run.
Family-specific values come from the session and are added after these.

A partition materialized by a run that reused sealed records shows that run in the UI's
"materialized in" line while its ``run_id``/``dagster_run_id`` name the run that computed them;
``computed_in`` says so in one sentence, and how to force a recomputation from the UI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awb_dagster.engine.core import PartitionReport
from awb_dagster.engine.plate_view import preprocess_fields, thumbnail_markdown
from awb_dagster.engine.producer import PinSession
from awb_dagster.engine.values import Markdown, Table
from awb_dagster.paths import HomePaths

# A run tag that recomputes sealed pairs, like the run config's `force`: a UI backfill takes tags
# (in its launch dialog) but no run config.
FORCE_TAG = "awb/force"
_TRUE = frozenset({"true", "1", "yes"})


def force_requested(tags: Mapping[str, str]) -> bool:
    """Whether the run's tags ask for recomputation (``awb/force=true``)."""
    return tags.get(FORCE_TAG, "").strip().lower() in _TRUE


def computed_in(report: PartitionReport, dagster_run_id: str | None) -> str:
    """One sentence: which run computed the partition's records, and whether this one reused them."""
    pair = report.pair
    origin = f"Dagster run `{pair.dagster_run_id or 'unknown'}` (sealed run `{pair.run_id}`)"
    if not report.reused:
        return f"Computed in {origin}, the run that materialized this partition."
    this_run = f"Dagster run `{dagster_run_id}`" if dagster_run_id else "the run that materialized this partition"
    return (
        f"Computed in {origin}; reused by {this_run}, which recomputed nothing. To recompute, launch "
        f"with the run config `force: true` or the tag `{FORCE_TAG}=true`."
    )


def partition_metadata(
    session: PinSession, report: PartitionReport, home: str, dagster_run_id: str | None = None
) -> dict[str, Any]:
    pair = report.pair
    instrument = session.instrument
    first = pair.record_ids[0] if pair.record_ids else None
    return {
        "record_id": first or "",
        "records": len(pair.record_ids),
        "plate_id": pair.plate_id,
        "plate": Markdown(thumbnail_markdown(HomePaths(Path(home)).catalog, pair.plate_id)),
        "plate_sha256": pair.plate_sha256,
        "model_id": instrument.instrument.id,
        "model_sha": instrument.pin.sha,
        "pin": instrument.pin.key,
        "license": instrument.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "preprocess": Table(preprocess_fields(pair.preprocess_tag), {"field": "string", "value": "string"}),
        "artifact": Path(pair.artifact_path),
        "artifact_sha256": pair.artifact_sha256,
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if report.reused else "computed",
        "computed_in": Markdown(computed_in(report, dagster_run_id)),
        "lineage": Markdown(f"`awb lineage {first} --home {home}`" if first else "no records for this plate"),
        **session.partition_metadata(pair, report.facts),
    }
