"""Texture records (seed section 11): an embedding record whose artifact also holds Gram descriptors.

A ConvNet record is a plate-scope embedding row (:func:`embedding_schema`: the pooled features as
``vector`` / ``vector_l2``, read by the atlas like any embedding) plus, per declared layer, a column
``gram_<layer>`` (dots as underscores): the upper triangle of the layer's Gram matrix, float32,
``C(C+1)/2`` values in row-major order. The layer list is in every record's preprocess tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import embedding_table
from awb_dagster.provenance.store import SealedPair

GRAMS_FINITE = "grams_finite"
GRAM_LENGTHS_DECLARED = "gram_lengths_declared"
TEXTURE_CHECK_DESCRIPTIONS = {
    GRAMS_FINITE: "Every Gram descriptor value of the materialized records is finite (no NaN or inf).",
    GRAM_LENGTHS_DECLARED: "Every declared Gram layer has a column whose rows hold C(C+1)/2 values, "
    "C being the layer's channel count at the pinned weights.",
}


def gram_column(layer: str) -> str:
    """The column of a layer's Gram descriptors (``features.3`` -> ``gram_features_3``)."""
    return "gram_" + layer.replace(".", "_")


def texture_table(rows: list[dict], vectors: np.ndarray, grams: Mapping[str, np.ndarray]) -> pa.Table:
    """An embedding table with one fixed-size float32 column per Gram layer, rows in order."""
    table = embedding_table(rows, vectors)
    for layer, values in grams.items():
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] != len(rows):
            raise ValueError(f"Gram layer {layer}: {len(rows)} rows but values of shape {values.shape}")
        flat = pa.array(values.reshape(-1), type=pa.float32())
        table = table.append_column(
            pa.field(gram_column(layer), pa.list_(pa.float32(), values.shape[1])),
            pa.FixedSizeListArray.from_arrays(flat, values.shape[1]),
        )
    return table


def check_texture_pairs(pairs: Sequence[SealedPair], declared_lengths: Mapping[str, Mapping[str, int]]) -> dict[str, CheckOutcome]:
    """The Gram part of the contract over ``pairs``; ``declared_lengths`` maps each pin key to
    {layer: upper-triangle length} as the loaded instrument reports it."""
    outcomes = {name: CheckOutcome(name) for name in TEXTURE_CHECK_DESCRIPTIONS}
    by_artifact: dict[str, list[SealedPair]] = {}
    for pair in pairs:
        by_artifact.setdefault(str(pair.artifact_path), []).append(pair)
    for path, artifact_pairs in by_artifact.items():
        name = f"{artifact_pairs[0].run_id}/{artifact_pairs[0].artifact}"
        lengths = declared_lengths[artifact_pairs[0].pin_key]
        plate_of = {record: pair.plate_id for pair in artifact_pairs for record in pair.record_ids}
        for outcome in outcomes.values():
            outcome.checked += len(plate_of)
        try:
            table = pq.read_table(path, filters=[("record_id", "in", list(plate_of))])
        except (OSError, pa.ArrowException) as exc:
            for outcome in outcomes.values():
                outcome.failures.extend(
                    Failure(name, f"artifact cannot be read ({type(exc).__name__}: {exc})", r, p) for r, p in plate_of.items()
                )
            continue
        ids = table.column("record_id").to_pylist()
        for layer, length in lengths.items():
            column = gram_column(layer)
            if column not in table.column_names:
                outcomes[GRAM_LENGTHS_DECLARED].failures.extend(
                    Failure(name, f"no column {column} for declared layer {layer}", r, plate_of[r]) for r in ids
                )
                continue
            values = table.column(column).combine_chunks()
            found = values.type.list_size
            for row, record in enumerate(ids):
                if found != length:
                    detail = f"{column} holds {found} values, the layer's Gram triangle has {length}"
                    outcomes[GRAM_LENGTHS_DECLARED].failures.append(Failure(name, detail, record, plate_of[record]))
                row_values = values[row].values.to_numpy(zero_copy_only=False)
                if not np.isfinite(row_values).all():
                    detail = f"{column}: {int((~np.isfinite(row_values)).sum())} non-finite values"
                    outcomes[GRAMS_FINITE].failures.append(Failure(name, detail, record, plate_of[record]))
    return outcomes
