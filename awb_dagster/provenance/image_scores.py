"""Scalar probe records computed from the plate's pixels (seed 8.3): per plate and probe pin, the
score and its calibration, and the contract check over them.

One row per (plate, pin), after :data:`RECORD_FIELDS`: ``scope`` ("plate"), ``score`` (float32) and
``calibration`` (the scale the score was trained on, or "uncalibrated"). Unlike the embedding-fed
scores (``provenance.probes.score_schema``) there is no upstream record: the probe read the plate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import RECORD_FIELDS
from awb_dagster.provenance.store import SealedPair

IMAGE_SCORES_FINITE = "image_scores_finite"
IMAGE_SCORE_CHECK_DESCRIPTIONS = {
    IMAGE_SCORES_FINITE: "Every record of the partition exists in its artifact, and its score is finite.",
}


def image_score_schema() -> pa.Schema:
    return pa.schema([*RECORD_FIELDS, ("scope", pa.string()), ("score", pa.float32()), ("calibration", pa.string())])


def image_score_table(rows: list[dict], scores: np.ndarray, calibration: str) -> pa.Table:
    """``rows`` carry the record fields; one score per row."""
    if len(scores) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
    columns = {name: [row[name] for row in rows] for name, _ in RECORD_FIELDS}
    columns.update(scope=["plate"] * len(rows), score=[float(s) for s in scores], calibration=[calibration] * len(rows))
    return pa.table(columns, schema=image_score_schema())


def check_image_score_pairs(pairs: Sequence[SealedPair]) -> dict[str, CheckOutcome]:
    """Each pair's records are in its artifact with a finite score."""
    outcome = CheckOutcome(IMAGE_SCORES_FINITE)
    by_artifact: dict[str, list[SealedPair]] = {}
    for pair in pairs:
        by_artifact.setdefault(str(pair.artifact_path), []).append(pair)
    for path, artifact_pairs in by_artifact.items():
        name = f"{artifact_pairs[0].run_id}/{artifact_pairs[0].artifact}"
        plate_of = {record: pair.plate_id for pair in artifact_pairs for record in pair.record_ids}
        outcome.checked += len(plate_of)
        try:
            table = pq.read_table(path, columns=["record_id", "score"], filters=[("record_id", "in", list(plate_of))])
        except (OSError, pa.ArrowException) as exc:
            outcome.failures.extend(Failure(name, f"artifact cannot be read ({exc})", r, p) for r, p in plate_of.items())
            continue
        scores = dict(zip(table.column("record_id").to_pylist(), table.column("score").to_pylist()))
        for record, plate in plate_of.items():
            if record not in scores:
                outcome.failures.append(Failure(name, "record missing from its artifact", record, plate))
            elif scores[record] is None or not np.isfinite(scores[record]):
                outcome.failures.append(Failure(name, f"score {scores[record]} is not finite", record, plate))
    return {IMAGE_SCORES_FINITE: outcome}
