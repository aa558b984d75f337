"""The caption contract (issue 11): one record per plate × captioner pin (scope ``plate``, region
``caption``), and its blocking checks.

Record (:func:`caption_schema`): ``text`` (what the model generated after the prompt, special
tokens dropped; empty only with ``empty_reason``), ``prompt_id`` / ``prompt_version`` /
``prompt_sha256`` (the registry prompt), ``decoding`` (JSON of the declared parameters: method,
num_beams, max_new_tokens, temperature, seed), ``token_ids`` (generated, special tokens excluded;
Florence-2: only the sequence framing excluded, its ``<loc_N>`` tokens being answer content) and
``token_count``. A weak label: never written over the plate's identity fields. Florence-2's tasks
seal under :func:`florence_pair_key`, one pair key per task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import RECORD_FIELDS
from awb_dagster.provenance.store import SealedPair
from awb_dagster.provenance.text_records import PROMPT_SHA_MATCHES
from awb_dagster.registry.prompts import PromptRegistry

CAPTION_PRESENT = "caption_text_or_empty_reason"
TOKENS_CONSISTENT = "caption_token_count_consistent"
CAPTION_CHECK_DESCRIPTIONS = {
    PROMPT_SHA_MATCHES: "Every caption names a registry prompt and carries the registry's sha256 for it.",
    CAPTION_PRESENT: "Every caption has non-empty text, or empty text with the reason it is empty (never both).",
    TOKENS_CONSISTENT: "token_count equals the number of token_ids, is at most the declared max_new_tokens, and is "
    "at least 1 when there is text.",
}


def florence_pair_key(pin_key: str, task: str) -> str:
    """The store's pair key of one Florence-2 task's records of a pin (kept apart from its other tasks)."""
    return f"{pin_key}.florence-{task}"


def caption_schema() -> pa.Schema:
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("text", pa.string()),
            ("empty_reason", pa.string()),
            ("prompt_id", pa.string()),
            ("prompt_version", pa.int32()),
            ("prompt_sha256", pa.string()),
            ("decoding", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
            ("token_count", pa.int32()),
        ]
    )


def caption_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=caption_schema())


def check_caption_pairs(pairs: Sequence[SealedPair], prompts: PromptRegistry) -> dict[str, CheckOutcome]:
    """The caption contract over the records of ``pairs``."""
    outcomes = {name: CheckOutcome(name) for name in CAPTION_CHECK_DESCRIPTIONS}
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        try:
            rows = pq.read_table(pair.artifact_path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            for outcome in outcomes.values():
                outcome.failures.append(Failure(name, f"artifact cannot be read ({type(exc).__name__}: {exc})", "", pair.plate_id))
            continue
        for row in rows:
            if row["record_id"] not in pair.record_ids:
                continue
            for check in outcomes:
                problem = _problem(check, row, prompts)
                outcomes[check].checked += 1
                if problem:
                    outcomes[check].failures.append(Failure(name, problem, row["record_id"], pair.plate_id))
    return outcomes


def _problem(check: str, row: dict, prompts: PromptRegistry) -> str | None:
    if check == PROMPT_SHA_MATCHES:
        if row["prompt_id"] is None or not prompts.verify(row["prompt_id"], row["prompt_version"], row["prompt_sha256"]):
            return (
                f"prompt {row['prompt_id']} v{row['prompt_version']} sha256 {row['prompt_sha256']} is not the registry's "
                f"({prompts.path}): re-run with the registry's prompt"
            )
        return None
    text, reason = row["text"] or "", row["empty_reason"] or ""
    if check == CAPTION_PRESENT:
        if not text and not reason:
            return "empty text without an empty_reason"
        return f"text {text[:40]!r} and an empty_reason {reason!r}" if text and reason else None
    ids, count = row["token_ids"] or [], row["token_count"]
    try:
        limit = int(json.loads(row["decoding"])["max_new_tokens"])
    except (TypeError, ValueError, KeyError) as exc:
        return f"decoding {row['decoding']!r} does not declare max_new_tokens ({type(exc).__name__})"
    if count != len(ids) or count > limit or (text and count < 1):
        return f"token_count {count} with {len(ids)} token_ids, max_new_tokens {limit}, text {text[:40]!r}"
    return None
