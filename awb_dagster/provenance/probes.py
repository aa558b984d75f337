"""Probe records (seed 8.3): per plate and probe pin, the logits and probabilities with their label
names, the label set's sha256 and the calibration, and the contract checks over them.

One row per (plate, pin), after :data:`RECORD_FIELDS`: ``scope`` ("plate"), ``label_count``,
``labels`` (names in label-id order), ``label_set_sha256``, ``logits`` and ``probabilities``
(float32, label-id order), ``top_label``, ``top_probability`` and ``calibration`` ("uncalibrated",
or the scale a probe was calibrated to). Failure modes and intended use are the registry's, in the
run manifest's instrument entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import RECORD_FIELDS
from awb_dagster.provenance.store import RunStore, SealedPair, StoreError

PROBABILITY_SUM_TOLERANCE = 1e-4  # float32 softmax rows sum to 1 within ~1e-6

PROBE_VALUES_FINITE = "probe_values_finite"
PROBE_LABEL_COUNT_DECLARED = "probe_label_count_declared"
PROBE_PROBABILITIES_SUM_TO_ONE = "probe_probabilities_sum_to_one"
PROBE_CHECK_DESCRIPTIONS = {
    PROBE_VALUES_FINITE: "Every logit and probability of the materialized records is finite.",
    PROBE_LABEL_COUNT_DECLARED: "`label_count`, the label names and the lengths of `logits` and "
    "`probabilities` equal the label count declared for the pin (roster expected_dim, else the "
    "checkpoint's id2label), and the label set sha256 is the pin's.",
    PROBE_PROBABILITIES_SUM_TO_ONE: f"Every row of `probabilities` sums to 1 within {PROBABILITY_SUM_TOLERANCE}.",
}


def probe_schema() -> pa.Schema:
    values = pa.list_(pa.float32())
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("label_count", pa.int32()),
            ("labels", pa.list_(pa.string())),
            ("label_set_sha256", pa.string()),
            ("logits", values),
            ("probabilities", values),
            ("top_label", pa.string()),
            ("top_probability", pa.float32()),
            ("calibration", pa.string()),
        ]
    )


def probe_table(rows: list[dict], labels: list[str], label_sha256: str, logits: np.ndarray,
                probabilities: np.ndarray, calibration: str) -> pa.Table:  # fmt: skip
    """One probe artifact: ``rows`` carry the record fields, the arrays one row per record."""
    if logits.shape != probabilities.shape or logits.shape[0] != len(rows):
        raise ValueError(f"{len(rows)} rows but logits {logits.shape} and probabilities {probabilities.shape}")
    top = probabilities.argmax(axis=1)
    columns = {name: [row[name] for row in rows] for name, _ in RECORD_FIELDS}
    columns.update(
        scope=["plate"] * len(rows),
        label_count=[len(labels)] * len(rows),
        labels=[labels] * len(rows),
        label_set_sha256=[label_sha256] * len(rows),
        logits=[row.astype(np.float32).tolist() for row in logits],
        probabilities=[row.astype(np.float32).tolist() for row in probabilities],
        top_label=[labels[i] for i in top],
        top_probability=[float(probabilities[r, i]) for r, i in enumerate(top)],
        calibration=[calibration] * len(rows),
    )
    return pa.table(columns, schema=probe_schema())


def check_probe_pairs(pairs: Sequence[SealedPair], declared: Mapping[str, tuple[int, str]]) -> dict[str, CheckOutcome]:
    """The probe contract over ``pairs``; ``declared`` maps each pin key to (label count, label set
    sha256) as the loaded probe declares them."""
    outcomes = {name: CheckOutcome(name) for name in PROBE_CHECK_DESCRIPTIONS}
    by_artifact: dict[str, list[SealedPair]] = {}
    for pair in pairs:
        by_artifact.setdefault(str(pair.artifact_path), []).append(pair)
    for path, artifact_pairs in by_artifact.items():
        name = f"{artifact_pairs[0].run_id}/{artifact_pairs[0].artifact}"
        count, sha = declared[artifact_pairs[0].pin_key]
        plate_of = {record: pair.plate_id for pair in artifact_pairs for record in pair.record_ids}
        for outcome in outcomes.values():
            outcome.checked += len(plate_of)

        def fail(check: str, record: str, detail: str) -> None:
            outcomes[check].failures.append(Failure(name, detail, record, plate_of.get(record, "")))

        try:
            table = pq.read_table(path, filters=[("record_id", "in", list(plate_of))])
        except (OSError, pa.ArrowException) as exc:
            for record in plate_of:
                for check in outcomes:
                    fail(check, record, f"artifact cannot be read ({type(exc).__name__}: {exc})")
            continue
        for row in table.to_pylist():
            record = row["record_id"]
            logits = np.asarray(row["logits"], dtype=np.float64)
            probabilities = np.asarray(row["probabilities"], dtype=np.float64)
            if not (np.isfinite(logits).all() and np.isfinite(probabilities).all()):
                fail(PROBE_VALUES_FINITE, record, "non-finite logits or probabilities")
            lengths = {row["label_count"], len(row["labels"]), len(logits), len(probabilities)}
            if lengths != {count}:
                fail(PROBE_LABEL_COUNT_DECLARED, record, f"lengths {sorted(lengths)}, declared {count} labels")
            elif row["label_set_sha256"] != sha:
                fail(PROBE_LABEL_COUNT_DECLARED, record, f"label set sha256 {row['label_set_sha256']}, the pin's is {sha}")
            total = float(probabilities.sum())
            if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
                fail(PROBE_PROBABILITIES_SUM_TO_ONE, record, f"probabilities sum to {total:.6f}")
    return outcomes


# --- scalar probes fed by embedding records ----------------------------------------------------

SCORES_FINITE = "scores_finite"
EMBEDDING_REFS_RESOLVE = "embedding_refs_resolve"
SCORE_CHECK_DESCRIPTIONS = {
    SCORES_FINITE: "Every score of the materialized records is finite.",
    EMBEDDING_REFS_RESOLVE: "Every record's `embedding_ref` is a sealed embedding record of the same plate "
    "(same plate sha256) made by the CLIP pin named in `embedding_pin`.",
}


def score_schema() -> pa.Schema:
    """A scalar probe record: the score, the embedding record it scored, and its calibration."""
    return pa.schema([*RECORD_FIELDS, ("scope", pa.string()), ("score", pa.float32()), ("embedding_ref", pa.string()),
                      ("embedding_pin", pa.string()), ("calibration", pa.string())])  # fmt: skip


def score_table(rows: list[dict], scores: np.ndarray) -> pa.Table:
    """``rows`` carry the record fields plus ``embedding_ref``, ``embedding_pin`` and ``calibration``."""
    if len(scores) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
    columns = {name: [row[name] for row in rows] for name in score_schema().names if name not in ("scope", "score")}
    columns.update(scope=["plate"] * len(rows), score=[float(s) for s in scores])
    return pa.table({name: columns[name] for name in score_schema().names}, schema=score_schema())


def check_score_pairs(store: RunStore, pairs: Sequence[SealedPair]) -> dict[str, CheckOutcome]:
    """Finite scores, and embedding refs that resolve to sealed records of the same plate and pin."""
    outcomes = {name: CheckOutcome(name) for name in SCORE_CHECK_DESCRIPTIONS}
    by_artifact: dict[str, list[SealedPair]] = {}
    for pair in pairs:
        by_artifact.setdefault(str(pair.artifact_path), []).append(pair)
    for path, artifact_pairs in by_artifact.items():
        name = f"{artifact_pairs[0].run_id}/{artifact_pairs[0].artifact}"
        plate_of = {record: pair for pair in artifact_pairs for record in pair.record_ids}
        for outcome in outcomes.values():
            outcome.checked += len(plate_of)
        table = pq.read_table(path, filters=[("record_id", "in", list(plate_of))])
        for row in table.to_pylist():
            pair = plate_of[row["record_id"]]

            def fail(check: str, detail: str) -> None:
                outcomes[check].failures.append(Failure(name, detail, row["record_id"], pair.plate_id))

            if row["score"] is None or not np.isfinite(row["score"]):
                fail(SCORES_FINITE, f"score {row['score']}")
            try:
                _, upstream = store.find_record(row["embedding_ref"])
            except StoreError as exc:  # the ref names no sealed record
                fail(EMBEDDING_REFS_RESOLVE, str(exc))
                continue
            if (upstream.plate_sha256, upstream.pin_key) != (pair.plate_sha256, row["embedding_pin"]):
                fail(EMBEDDING_REFS_RESOLVE, f"embedding {row['embedding_ref']} is of plate {upstream.plate_id} "
                     f"by pin {upstream.pin_key}, not of this plate by {row['embedding_pin']}")  # fmt: skip
    return outcomes
