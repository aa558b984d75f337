"""TrOCR on line crops: a tiny VisionEncoderDecoder checkpoint in TrOCR's published layout, served
by the loopback hub under the real model's id, pinned and loaded at its sha, reading the line
boxes of Tesseract words."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from demo_homes import make_demo_home
from PIL import Image, ImageDraw

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.tiny_trocr import build_tiny_trocr_files
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.tesseract import CAPTION_ZONE, OcrWord
from awb_dagster.instruments.trocr import LINE_MARGIN, LineRecognizer, line_boxes
from awb_dagster.producers.ocr import OCR_ASSET
from awb_dagster.producers.trocr_lines import TROCR_ASSET
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.registry.prompts import Decoding
from awb_dagster.runner import materialize_pin_ranges

MODEL = "microsoft/trocr-base-printed"
HAVE_TESSERACT = shutil.which("tesseract") is not None


def words_on(lines: dict[str, list[tuple[int, int, int, int]]]) -> list[OcrWord]:
    return [
        OcrWord("w", 0.9, box, line_id, CAPTION_ZONE, index, "caption@3")
        for index, (line_id, box) in enumerate((line_id, box) for line_id, boxes in lines.items() for box in boxes)
    ]


def test_line_boxes_union_grow_and_clip():
    words = words_on({"caption@3:1.1.1": [(100, 200, 50, 20), (160, 198, 40, 24)], "caption@3:1.1.2": [(0, 290, 30, 10)]})
    boxes = line_boxes(words, width=300, height=300)
    m = LINE_MARGIN
    assert boxes == {"caption@3:1.1.1": (100 - m, 198 - m, 100 + 2 * m, 24 + 2 * m), "caption@3:1.1.2": (0, 290 - m, 30 + m, 10 + m)}


@pytest.fixture(scope="module")
def recognizer(loopback_hub, tmp_path_factory) -> LineRecognizer:
    loopback_hub.hub.add_commit(
        MODEL, build_tiny_trocr_files(), license="unknown", pipeline_tag="image-to-text", library_name="transformers"
    )
    instrument = Registry.load().get(MODEL).instrument
    pin = capture_pin(instrument, endpoint=loopback_hub.endpoint, cache_dir=tmp_path_factory.mktemp("trocr-cache"))
    return LineRecognizer(instrument, pin, Decoding(max_new_tokens=6), device="cpu", cache_dir=tmp_path_factory.mktemp("trocr-hf"))


def test_reads_each_line_crop_deterministically(recognizer):
    plate = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(plate).text((110, 205), "PSITACUS CAROLINENSIS", fill="black")
    boxes = line_boxes(words_on({"caption@3:1.1.1": [(100, 200, 150, 20)], "caption@3:1.1.2": [(120, 240, 90, 18)]}), 400, 300)
    lines = recognizer.recognize(plate, boxes)
    assert [line.line_id for line in lines] == list(boxes) and [line.box for line in lines] == list(boxes.values())
    assert all(isinstance(line.text, str) and 0 <= line.token_count <= 6 for line in lines)
    assert recognizer.recognize(plate, boxes) == lines  # greedy decoding of the same crops
    assert recognizer.recognize(plate, {}) == []
    with pytest.raises(InstrumentError, match="not inside"):
        recognizer.recognize(plate, {"x": (390, 0, 20, 10)})


def test_preprocess_tag_and_manifest_carry_the_decoding(recognizer):
    assert recognizer.preprocess_tag.endswith(Decoding(max_new_tokens=6).tag())
    assert "size=32x32" in recognizer.preprocess_tag and f"margin{LINE_MARGIN}" in recognizer.preprocess_tag
    described = recognizer.describe()
    assert described["decoding"]["max_new_tokens"] == 6 and described["sha"] == recognizer.pin.sha
    assert Decoding(max_new_tokens=7).tag() != Decoding(max_new_tokens=6).tag()


def test_other_families_are_refused(recognizer):
    clip = Registry.load().get("openai/clip-vit-base-patch32").instrument
    with pytest.raises(InstrumentError, match="not run by the TrOCR adapter"):
        LineRecognizer(clip, replace(recognizer.pin, model_id=clip.id))


# --- the asset end to end: ocr_text, then trocr_lines on its line boxes ---------------------------


@pytest.mark.skipif(not HAVE_TESSERACT, reason="tesseract is not installed (apt-get install tesseract-ocr)")
def test_trocr_lines_read_the_lines_of_ocr_text(recognizer, loopback_hub, tmp_path_factory):
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR

    home = make_demo_home(loopback_hub, tmp_path_factory, "trocr", ["tesseract", MODEL],
                          plate_files=[SAMPLE_PLATES_DIR / "audubon_p026_carolina-parrot.jpg"],
                          license_opt_in=["tesseract", "trocr-base-printed"])  # fmt: skip
    tesseract_pin, trocr_pin = home.pins["tesseract"], home.pins[MODEL]
    few_reads = {"header_scales": [2.0], "caption_scales": [2.0], "plate_line_scales": [], "caption_line_scales": [],
                 "header_norm_scales": []}  # fmt: skip
    (before,) = materialize_pin_ranges(home.defs, home.instance, job_name(TROCR_ASSET), TROCR_ASSET, {}, trocr_pin, None)
    assert not before.success  # no ocr_text record yet: the plate's partition fails saying so
    (ocr,) = materialize_pin_ranges(home.defs, home.instance, job_name(OCR_ASSET), OCR_ASSET, few_reads, tesseract_pin, None)
    (lines_run,) = materialize_pin_ranges(
        home.defs, home.instance, job_name(TROCR_ASSET), TROCR_ASSET, {"max_new_tokens": 5}, trocr_pin, None
    )
    assert ocr.success and lines_run.success
    (source,) = home.store.sealed_pairs(tesseract_pin).values()
    (pair,) = home.store.sealed_pairs(trocr_pin).values()
    rows = pq.read_table(pair.artifact_path).to_pylist()
    (ocr_row,) = pq.read_table(source.artifact_path).to_pylist()
    assert rows and {r["source_record_id"] for r in rows} == {ocr_row["record_id"]}
    assert {r["line_id"] for r in rows} == {w["line_id"] for w in ocr_row["words"]}  # one read per zone: every line
    assert all(0 <= r["token_count"] <= 5 and json.loads(r["decoding"])["max_new_tokens"] == 5 for r in rows)
    assert f"lines={tesseract_pin}:" in pair.preprocess_tag and "max_new=5" in pair.preprocess_tag
