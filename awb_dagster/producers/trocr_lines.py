"""TrOCR over the text lines Tesseract found (seed section 10.1): per plate × TrOCR pin, one
record per line, reading the line boxes of the plate's sealed ``ocr_text`` record.

The lines come from the active Tesseract pin's record for the same plate bytes (the first read of
each zone: later reads find the same lines again); each line record names that Tesseract record
and its line id, and the preprocess tag names the Tesseract pin and its record's tag, so new lines
make new records. A plate without a sealed ``ocr_text`` record fails its partition saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_TEXT
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.tesseract import OcrWord
from awb_dagster.instruments.trocr import ADAPTER_VERSION, LineRecognizer, line_boxes
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.ocr import OCR_ASSET
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair
from awb_dagster.provenance.text_records import LINE_CHECK_DESCRIPTIONS, check_line_pairs, line_text_table
from awb_dagster.registry.prompts import Decoding

TROCR_ASSET = "trocr_lines"
FAMILY = "trocr"
TESSERACT = "tesseract"


def first_read_words(row: Mapping[str, Any]) -> list[OcrWord]:
    """The words of the first read of each zone of a sealed ``ocr_text`` record."""
    first: dict[str, str] = {}
    words = []
    for word in sorted(row["words"], key=lambda w: w["word_index"]):
        if first.setdefault(word["zone"], word["pass_id"]) == word["pass_id"]:
            words.append(OcrWord(word["text"], word["confidence"], tuple(word["box"]), word["line_id"], word["zone"],
                                 word["word_index"], word["pass_id"]))  # fmt: skip
    return words


class TrocrSession:
    batch_size = 1
    run_kind = "trocr-lines"
    code_version = ADAPTER_VERSION

    def __init__(self, recognizer: LineRecognizer, tesseract_pin: str, store: RunStore, max_pixels: int):
        self.instrument = recognizer
        self.store_key = recognizer.pin.key
        self._tesseract_pin = tesseract_pin
        self._store = store
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        return {"decoding": asdict(self.instrument.decoding), "lines_from": self._tesseract_pin, "max_pixels": self._max_pixels}

    def _source(self, plate: Plate) -> SealedPair | None:
        pairs = [p for p in self._store.sealed_pairs(self._tesseract_pin, {plate.plate_id}).values() if p.plate_sha256 == plate.sha256]
        return max(pairs, key=lambda pair: pair.run_id, default=None)

    def _tag(self, source: SealedPair) -> str:
        digest = hashlib.sha256(source.preprocess_tag.encode("utf-8")).hexdigest()[:12]
        return f"{self.instrument.preprocess_tag}|lines={self._tesseract_pin}:{digest}:first-read-per-zone"

    def expected_tag(self, plate: Plate) -> str | None:
        source = self._source(plate)
        return None if source is None else self._tag(source)

    def prepare(self, plate: Plate) -> tuple[Image.Image, SealedPair, dict[str, Any]]:
        source = self._source(plate)
        if source is None:
            raise InstrumentError(
                f"plate {plate.plate_id} has no sealed {OCR_ASSET} record under {self._tesseract_pin}: materialize "
                f"{OCR_ASSET} for that pin and plate first"
            )
        (row,) = [r for r in pq.read_table(source.artifact_path).to_pylist() if r["record_id"] in source.record_ids]
        image, _ = load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)
        return image, source, row

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        return [self._read(plate, *prepared, run) for plate, prepared in batch]

    def _read(self, plate: Plate, image: Image.Image, source: SealedPair, row: dict[str, Any], run: OpenRun) -> PlateOutput:
        recognizer = self.instrument
        tag = self._tag(source)
        lines = recognizer.recognize(image, line_boxes(first_read_words(row), image.width, image.height))
        rows = [
            {
                **record_fields(
                    plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=recognizer.instrument.id,
                    model_sha=recognizer.pin.sha, pin_key=recognizer.pin.key, preprocess_tag=tag, run_id=run.run_id,
                    scope="plate", region=f"line:{line.line_id}",
                ),  # fmt: skip
                "scope": "plate", "line_id": line.line_id, "box": list(line.box), "source_record_id": row["record_id"],
                "text": line.text, "decoding": json.dumps(asdict(recognizer.decoding)), "token_count": line.token_count,
            }  # fmt: skip
            for line in lines
        ]
        artifact = run.write_table("trocr-lines", line_text_table(rows))
        return PlateOutput(plate, tag, [r["record_id"] for r in rows], artifact, {"lines": len(rows)})

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        rows = pq.read_table(pair.artifact_path, columns=["line_id", "text", "token_count", "source_record_id"]).to_pylist()
        return {
            "lines": len(rows),
            "source_record_id": rows[0]["source_record_id"] if rows else "",
            "texts": Json({r["line_id"]: r["text"] for r in rows}),
            "decoding": Json(asdict(self.instrument.decoding)),
        }


class TrocrProducer:
    asset_name = TROCR_ASSET
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_TEXT
    description = (
        "TrOCR line recognition over the text lines of each plate's ocr_text record (the active Tesseract pin): "
        "per plate × TrOCR pin one record per line with its box, text, decoding parameters and generated tokens, "
        "naming the Tesseract record and line it read."
    )
    code_version = ADAPTER_VERSION
    settings_type = Decoding
    check_descriptions = LINE_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = (OCR_ASSET,)
    license_gated = True

    def open(self, pin_key: str, settings: Decoding, inputs: StepInputs) -> TrocrSession:
        tesseract = inputs.instruments.home.registry().get(TESSERACT).active_pin
        if tesseract is None:
            raise InstrumentError(f"{TROCR_ASSET} reads the lines of {OCR_ASSET}: pin tesseract first (`awb pin tesseract`)")
        recognizer = inputs.instruments.trocr_recognizer(pin_key, settings)
        return TrocrSession(recognizer, tesseract.key, inputs.store, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return check_line_pairs(pairs, sizes)
