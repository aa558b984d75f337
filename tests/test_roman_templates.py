"""The template numeral reader (instruments.roman_templates) and how the parser weighs its reads."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from awb_dagster.instruments.plate_label import parse_label
from awb_dagster.instruments.roman_templates import TEMPLATES_PATH, load_templates, normalize, read_numeral_by_template
from awb_dagster.instruments.tesseract import HEADER_ZONE, OcrWord

BENCH = Path(__file__).resolve().parents[1] / "bench"


def word(text: str, x: int, pass_id: str, index: int) -> OcrWord:
    return OcrWord(text, 0.9, (x, 50, 10 * len(text), 20), f"{pass_id}:1.1.1", HEADER_ZONE, index, pass_id)


def test_template_read_counts_when_two_scales_agree_and_tesseract_begins_it():
    # Tesseract reads "PLATE CCCXXX." as CCCAAA (no numeral); the templates read CCCXXX at two scales
    tesseract = [word("PLATE", 1500, "header@2", 0), word("CCCAAA", 1560, "header@2", 1)]
    reads = [word(t, x, f"header@templates{s}", 2 + i) for i, (t, x, s) in
             enumerate([("PLATE", 1500, 2), ("CCCXXX", 1560, 2), ("PLATE", 1500, 3), ("CCCXXX", 1560, 3)])]  # fmt: skip
    assert parse_label(tesseract + reads, 2000).plate_number.value == 330
    assert parse_label(tesseract + reads[:2], 2000).plate_number is None  # one scale alone is no reading
    other = [replace(w, text="CCLAAA") if w.text == "CCCAAA" else w for w in tesseract]
    assert parse_label(other + reads, 2000).plate_number is None  # Tesseract's CCL does not begin CCCXXX


def test_templates_are_tuning_data_with_their_provenance():
    data = json.loads(TEMPLATES_PATH.read_text(encoding="utf-8"))
    names, matrix, aspects = load_templates()
    assert {"C", "L", "X", "V", "I"} <= set(names) and matrix.shape == (len(names), 16 * 32)
    held_out = {row["file"] for row in csv.DictReader(
        (line for line in (BENCH / "ocr_truth_holdout3.tsv").read_text().splitlines() if not line.startswith("#")), delimiter="\t")}  # fmt: skip
    used = data["provenance"]["plates_used"]
    assert used and not any(name in entry for entry in used for name in held_out)
    assert all("holdout3" not in entry for entry in used)


def test_each_template_reads_as_itself_and_blank_reads_nothing():
    names, matrix, aspects = load_templates()
    assert (aspects > 0).all() and aspects[names.index("I")] < aspects[names.index("L")]
    assert read_numeral_by_template(np.full((60, 200), 250, dtype=np.uint8), 30) is None
    for name, row in zip(names, matrix):
        assert int(np.argmax(matrix @ row)) == names.index(name)
    mask = np.zeros((30, 8), dtype=bool)
    mask[:, 2:6] = True  # a plain upright stroke is closest to I
    assert names[int(np.argmax(matrix @ normalize(mask)))] == "I"
