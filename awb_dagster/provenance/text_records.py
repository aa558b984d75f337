"""The text contract (issue 11): one record per plate × text pin, and its blocking checks.

Text record (:func:`text_schema`), ``record_id`` of scope ``plate``, region ``text``:

- ``text``: the recognised text of every read, words joined by spaces, lines by newlines;
- ``prompt_id`` / ``prompt_version`` / ``prompt_sha256``: the registry prompt a model ran with
  (null for Tesseract, which takes none); ``decoding``: JSON of the declared decoding parameters
  (null for Tesseract); ``token_count``: words for OCR, generated tokens for a model;
- ``words``: per word ``text``, ``confidence`` [0, 1], ``box`` plate pixel XYWH, ``line_id``,
  ``zone``, ``word_index``, ``pass_id`` (the read that found it); ``zones``: JSON of zone name -> plate pixel box (left, top, right, bottom);
- ``label``: JSON of the parsed weak annotation (plate number, Latin name, common name, each with
  confidence and word indices). A weak signal: never written over the plate's identity fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import RECORD_FIELDS
from awb_dagster.provenance.store import SealedPair
from awb_dagster.registry.prompts import PromptRegistry

WORD_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("confidence", pa.float32()),
        ("box", pa.list_(pa.int32(), 4)),
        ("line_id", pa.string()),
        ("zone", pa.string()),
        ("word_index", pa.int32()),
        ("pass_id", pa.string()),
    ]
)

BOXES_INSIDE_PLATE = "text_boxes_inside_plate"
CONFIDENCES_IN_RANGE = "text_confidences_in_range"
PROMPT_SHA_MATCHES = "text_prompt_sha256_matches_registry"
TEXT_CHECK_DESCRIPTIONS = {
    BOXES_INSIDE_PLATE: "Every word box (XYWH, plate pixels) has positive size and lies inside its plate.",
    CONFIDENCES_IN_RANGE: "Every word confidence is a number in [0, 1].",
    PROMPT_SHA_MATCHES: "A record that names a prompt carries the prompt registry's sha256 for it.",
}


def text_schema() -> pa.Schema:
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("text", pa.string()),
            ("prompt_id", pa.string()),
            ("prompt_version", pa.int32()),
            ("prompt_sha256", pa.string()),
            ("decoding", pa.string()),
            ("token_count", pa.int32()),
            ("words", pa.list_(WORD_TYPE)),
            ("zones", pa.string()),
            ("label", pa.string()),
        ]
    )


def text_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=text_schema())


def check_text_pairs(
    pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]], prompts: PromptRegistry
) -> dict[str, CheckOutcome]:
    """The text contract over the records of ``pairs``; ``plate_sizes`` maps plate sha256 ->
    (height, width)."""
    outcomes = {name: CheckOutcome(name) for name in TEXT_CHECK_DESCRIPTIONS}
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        try:
            rows = pq.read_table(pair.artifact_path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            for outcome in outcomes.values():
                outcome.failures.append(Failure(name, f"artifact cannot be read ({type(exc).__name__}: {exc})", "", pair.plate_id))
            continue
        height, width = plate_sizes.get(pair.plate_sha256, (None, None))
        for row in rows:
            if row["record_id"] not in pair.record_ids:
                continue
            fail = _failer(name, row["record_id"], pair.plate_id)
            _check_words(row, width, height, outcomes, fail)
            outcome = outcomes[PROMPT_SHA_MATCHES]
            outcome.checked += 1
            if row["prompt_id"] is not None and not prompts.verify(row["prompt_id"], row["prompt_version"], row["prompt_sha256"]):
                outcome.failures.append(fail(
                    f"prompt {row['prompt_id']} v{row['prompt_version']} sha256 {row['prompt_sha256']} is not the "
                    f"registry's ({prompts.path}): re-run with the registry's prompt"
                ))  # fmt: skip
    return outcomes


def _failer(name: str, record_id: str, plate_id: str) -> Callable[[str], Failure]:
    return lambda detail: Failure(name, detail, record_id, plate_id)


def _check_words(
    row: dict, width: int | None, height: int | None, outcomes: dict[str, CheckOutcome], fail: Callable[[str], Failure]
) -> None:
    boxes, confidences = outcomes[BOXES_INSIDE_PLATE], outcomes[CONFIDENCES_IN_RANGE]
    for word in row["words"] or []:
        boxes.checked += 1
        confidences.checked += 1
        x, y, w, h = word["box"]
        if width is None or height is None:
            boxes.failures.append(fail(f"word {word['word_index']}: plate {row['plate_sha256'][:12]} is not in the catalog"))
        elif w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            boxes.failures.append(fail(f"word {word['word_index']} box {word['box']} is outside the {width}x{height} plate"))
        confidence = word["confidence"]
        if confidence is None or not 0.0 <= confidence <= 1.0:
            confidences.failures.append(fail(f"word {word['word_index']} confidence {confidence} is not in [0, 1]"))


def label_of(row: Mapping[str, object]) -> dict:
    """The parsed label of a text record."""
    return json.loads(str(row["label"])) if row.get("label") else {}


def line_text_schema() -> pa.Schema:
    """A line recognised by a line model (TrOCR), one record per line (scope ``plate``, region
    ``line:<line_id>``, as class areas use ``class:<id>``): the line box it read (plate pixel XYWH), where the box came from (the
    Tesseract record and its line id), the text, the decoding (JSON) and the generated tokens."""
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("line_id", pa.string()),
            ("box", pa.list_(pa.int32(), 4)),
            ("source_record_id", pa.string()),
            ("text", pa.string()),
            ("decoding", pa.string()),
            ("token_count", pa.int32()),
        ]
    )


def line_text_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=line_text_schema())


LINE_CHECK_DESCRIPTIONS = {BOXES_INSIDE_PLATE: "Every line box (XYWH, plate pixels) has positive size and lies inside its plate."}


def check_line_pairs(pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]) -> dict[str, CheckOutcome]:
    """Line boxes inside their plates; ``plate_sizes`` maps plate sha256 -> (height, width)."""
    outcome = CheckOutcome(BOXES_INSIDE_PLATE)
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        try:
            rows = pq.read_table(pair.artifact_path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            outcome.failures.append(Failure(name, f"artifact cannot be read ({type(exc).__name__}: {exc})", "", pair.plate_id))
            continue
        height, width = plate_sizes.get(pair.plate_sha256, (0, 0))
        for row in rows:
            outcome.checked += 1
            x, y, w, h = row["box"]
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                outcome.failures.append(Failure(
                    name, f"line {row['line_id']} box {row['box']} is outside the {width}x{height} plate", row["record_id"], pair.plate_id,
                ))  # fmt: skip
    return {BOXES_INSIDE_PLATE: outcome}
