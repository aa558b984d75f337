"""Zero-shot label records (issue 11): per plate and CLIP/SigLIP pin, the probabilities of a
registered label set (a ``zero-shot`` prompt of ``registry/prompts.toml``), computed from the
plate's SEALED image embedding record and the pin's text tower, and the contract checks over them.

One row per (plate, pin, label set), after :data:`RECORD_FIELDS`: ``scope`` ("plate"), the label
set's ``label_set_id``, ``label_set_version`` and ``label_set_sha256`` (the prompt registry's),
``label_count``, ``labels``, ``texts`` (what the text tower read), ``token_counts``, ``cosines``,
``logits`` and ``probabilities`` (label order), ``scoring`` ("softmax" over the labels for CLIP,
"sigmoid" per label for SigLIP: SigLIP's probabilities need not sum to 1), ``logit_scale``,
``logit_bias``, ``top_label``, ``top_probability``, and ``embedding_ref`` / ``embedding_pin``:
the image embedding record the probabilities were computed from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.store import RunStore, SealedPair, StoreError
from awb_dagster.provenance.records import RECORD_FIELDS
from awb_dagster.registry.prompts import PromptError, PromptRegistry

PROBABILITY_SUM_TOLERANCE = 1e-4

ZEROSHOT_PROBABILITIES_VALID = "zeroshot_probabilities_valid"
ZEROSHOT_LABEL_COUNT_DECLARED = "zeroshot_label_count_declared"
ZEROSHOT_PROMPT_SHA_MATCHES = "zeroshot_prompt_sha_matches"
ZEROSHOT_EMBEDDING_REFS_RESOLVE = "zeroshot_embedding_refs_resolve"
ZEROSHOT_CHECK_DESCRIPTIONS = {
    ZEROSHOT_PROBABILITIES_VALID: "Every cosine, logit and probability is finite, every probability in [0, 1], "
    f"and softmax rows (CLIP) sum to 1 within {PROBABILITY_SUM_TOLERANCE}.",
    ZEROSHOT_LABEL_COUNT_DECLARED: "`label_count`, the labels and the lengths of `texts`, `cosines`, `logits` and "
    "`probabilities` equal the label set the prompt registry declares for `label_set_id` / `label_set_version`.",
    ZEROSHOT_PROMPT_SHA_MATCHES: "`label_set_sha256` is the prompt registry's sha256 of that label set (template "
    "and labels): a record made with an edited template fails.",
    ZEROSHOT_EMBEDDING_REFS_RESOLVE: "Every record's `embedding_ref` is a sealed embedding record of the same plate "
    "(same plate sha256) made by the pin named in `embedding_pin`.",
}


def zeroshot_schema() -> pa.Schema:
    values = pa.list_(pa.float32())
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("label_set_id", pa.string()),
            ("label_set_version", pa.int32()),
            ("label_set_sha256", pa.string()),
            ("label_count", pa.int32()),
            ("labels", pa.list_(pa.string())),
            ("texts", pa.list_(pa.string())),
            ("token_counts", pa.list_(pa.int32())),
            ("cosines", values),
            ("logits", values),
            ("probabilities", values),
            ("scoring", pa.string()),
            ("logit_scale", pa.float32()),
            ("logit_bias", pa.float32()),
            ("top_label", pa.string()),
            ("top_probability", pa.float32()),
            ("embedding_ref", pa.string()),
            ("embedding_pin", pa.string()),
        ]
    )


def zeroshot_table(rows: list[dict], cosines: np.ndarray, logits: np.ndarray, probabilities: np.ndarray) -> pa.Table:
    """``rows`` carry the record fields and every scalar or label-set column; the arrays one row per record."""
    if not (cosines.shape == logits.shape == probabilities.shape) or cosines.shape[0] != len(rows):
        raise ValueError(f"{len(rows)} rows but cosines {cosines.shape}, logits {logits.shape}, "
                         f"probabilities {probabilities.shape}")  # fmt: skip
    top = probabilities.argmax(axis=1)
    full = [
        {**row, "scope": "plate", "label_count": len(row["labels"]), "cosines": c.tolist(), "logits": z.tolist(),
         "probabilities": p.tolist(), "top_label": row["labels"][t], "top_probability": float(p[t])}
        for row, c, z, p, t in zip(rows, cosines, logits, probabilities, top)
    ]  # fmt: skip
    return pa.Table.from_pylist(full, schema=zeroshot_schema())


def _check_values(row: dict, fail) -> None:
    arrays = [np.asarray(row[name] or [], dtype=np.float64) for name in ("cosines", "logits", "probabilities")]
    if not all(np.isfinite(a).all() for a in arrays):
        fail(ZEROSHOT_PROBABILITIES_VALID, "a cosine, logit or probability is not finite")
        return
    probabilities = arrays[2]
    if probabilities.size and (probabilities.min() < 0.0 or probabilities.max() > 1.0):
        fail(ZEROSHOT_PROBABILITIES_VALID, f"probabilities outside [0, 1]: {probabilities.min()}..{probabilities.max()}")
    if row["scoring"] == "softmax" and abs(probabilities.sum() - 1.0) > PROBABILITY_SUM_TOLERANCE:
        fail(ZEROSHOT_PROBABILITIES_VALID, f"softmax probabilities sum to {probabilities.sum():.6f}")


def _check_label_set(row: dict, prompts: PromptRegistry, fail) -> None:
    try:
        prompt = prompts.get(row["label_set_id"], row["label_set_version"])
    except PromptError as exc:
        fail(ZEROSHOT_LABEL_COUNT_DECLARED, str(exc))
        fail(ZEROSHOT_PROMPT_SHA_MATCHES, str(exc))
        return
    if prompt.sha256 != row["label_set_sha256"]:
        fail(ZEROSHOT_PROMPT_SHA_MATCHES, f"label set sha256 {row['label_set_sha256']}, the registry's "
             f"{prompt.id}@v{prompt.version} is {prompt.sha256} ({prompts.path})")  # fmt: skip
    declared = len(prompt.labels)
    lengths = {name: len(row[name] or []) for name in ("labels", "texts", "cosines", "logits", "probabilities")}
    if row["label_count"] != declared or set(lengths.values()) != {declared} or list(row["labels"]) != list(prompt.labels):
        fail(ZEROSHOT_LABEL_COUNT_DECLARED, f"{prompt.id}@v{prompt.version} declares {declared} labels; the record "
             f"has label_count {row['label_count']}, lengths {lengths}")  # fmt: skip


def check_zeroshot_pairs(
    store: RunStore, pairs: Sequence[SealedPair], prompts: PromptRegistry | None = None
) -> dict[str, CheckOutcome]:
    """The contract over every record of ``pairs`` (prompts: the package's registry by default)."""
    prompts = prompts or PromptRegistry.load()
    outcomes = {name: CheckOutcome(name) for name in ZEROSHOT_CHECK_DESCRIPTIONS}
    by_artifact: dict[str, list[SealedPair]] = {}
    for pair in pairs:
        by_artifact.setdefault(str(pair.artifact_path), []).append(pair)
    for path, artifact_pairs in by_artifact.items():
        name = f"{artifact_pairs[0].run_id}/{artifact_pairs[0].artifact}"
        pair_of = {record: pair for pair in artifact_pairs for record in pair.record_ids}
        for outcome in outcomes.values():
            outcome.checked += len(pair_of)
        for row in pq.read_table(path, filters=[("record_id", "in", list(pair_of))]).to_pylist():
            pair = pair_of[row["record_id"]]

            def fail(check: str, detail: str) -> None:
                outcomes[check].failures.append(Failure(name, detail, row["record_id"], pair.plate_id))

            _check_values(row, fail)
            _check_label_set(row, prompts, fail)
            try:
                _, upstream = store.find_record(row["embedding_ref"])
            except StoreError as exc:
                fail(ZEROSHOT_EMBEDDING_REFS_RESOLVE, str(exc))
                continue
            if (upstream.plate_sha256, upstream.pin_key) != (pair.plate_sha256, row["embedding_pin"]):
                fail(ZEROSHOT_EMBEDDING_REFS_RESOLVE, f"embedding {row['embedding_ref']} is of plate "
                     f"{upstream.plate_id} by pin {upstream.pin_key}, not of this plate by {row['embedding_pin']}")  # fmt: skip
    return outcomes


ZEROSHOT_KEY_SUFFIX = ".zeroshot"


def zeroshot_pair_key(pin_key: str) -> str:
    """The store's pair key of a pin's zero-shot records (kept apart from its image embeddings)."""
    return f"{pin_key}{ZEROSHOT_KEY_SUFFIX}"
