"""Text from plates (seed section 10.1): Tesseract OCR of the engraved caption bands, per
plate × Tesseract pin, with a parsed weak label.

Per plate one text record (:mod:`awb_dagster.provenance.text_records`): the words with plate
pixel boxes, confidences, line ids and zones, and the parsed plate number, Latin name and common
name, each with its confidence and source words. Text is a weak signal: it is never written
over the plate's identity fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_TEXT, OCR_FAMILIES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json
from awb_dagster.instruments.plate_label import PARSER_VERSION, parse_label
from awb_dagster.instruments.tesseract import ADAPTER_VERSION, TesseractReader, ZoneSettings, label_zones
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair
from awb_dagster.provenance.text_records import TEXT_CHECK_DESCRIPTIONS, check_text_pairs, label_of, text_table
from awb_dagster.registry.prompts import PromptRegistry

OCR_ASSET = "ocr_text"
FAMILY = OCR_FAMILIES[0]


def text_of(words: Sequence[Any]) -> str:
    """Words joined by spaces within a line and by newlines between lines, in reading order."""
    lines: dict[str, list[str]] = {}
    for word in words:
        lines.setdefault(word.line_id, []).append(word.text)
    return "\n".join(" ".join(texts) for texts in lines.values())


class OcrSession:
    batch_size = 1
    run_kind = "ocr-text"
    code_version = f"{ADAPTER_VERSION}+{PARSER_VERSION}"

    def __init__(self, reader: TesseractReader, max_pixels: int):
        self.instrument = reader
        self.store_key = reader.pin.key
        self._max_pixels = max_pixels
        self.preprocess_tag = f"{reader.preprocess_tag}|{PARSER_VERSION}"

    def run_config(self) -> dict[str, Any]:
        return {"zones": self.instrument.describe()["zones"], "parser": PARSER_VERSION, "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.preprocess_tag

    def prepare(self, plate: Plate) -> Image.Image:
        image, _ = load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)
        return image

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        return [self._read(plate, image, run) for plate, image in batch]

    def _read(self, plate: Plate, image: Image.Image, run: OpenRun) -> PlateOutput:
        reader = self.instrument
        words = reader.read(image)
        label = parse_label(words, image.width)
        row = {
            **record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=reader.instrument.id,
                model_sha=reader.pin.sha, pin_key=reader.pin.key, preprocess_tag=self.preprocess_tag,
                run_id=run.run_id, scope="plate", region="text",
            ),  # fmt: skip
            "scope": "plate",
            "text": text_of(words),
            "prompt_id": None,  # Tesseract takes no prompt
            "prompt_version": None,
            "prompt_sha256": None,
            "decoding": None,
            "token_count": len(words),
            "words": [
                {"text": w.text, "confidence": w.confidence, "box": list(w.box), "line_id": w.line_id,
                 "zone": w.zone, "word_index": w.word_index, "pass_id": w.pass_id}
                for w in words
            ],  # fmt: skip
            "zones": json.dumps(label_zones(image.width, image.height, reader.settings)),
            "label": json.dumps(label.as_dict()),
        }
        artifact = run.write_table("ocr-text", text_table([row]))
        return PlateOutput(plate, self.preprocess_tag, [row["record_id"]], artifact, {"words": len(words)})

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        rows = pq.read_table(pair.artifact_path, columns=["token_count", "label", "text"]).to_pylist()
        label = label_of(rows[0]) if rows else {}
        values = {name: (field or {}).get("value") for name, field in label.items()}
        return {
            "words": rows[0]["token_count"] if rows else 0,
            "plate_number": str(values.get("plate_number") or ""),
            "latin_name": str(values.get("latin_name") or ""),
            "common_name": str(values.get("common_name") or ""),
            "label": Json(label),
            "engine": Json(self.instrument.describe()["engine"]),
        }


class OcrProducer:
    asset_name = OCR_ASSET
    pins_dimension = f"{FAMILY}_pins"
    group = GROUP_TEXT
    description = (
        "Text from plates (Tesseract OCR of the header and caption bands): per plate × pinned engine the words "
        "with plate-pixel boxes, confidences, line ids and zones, and a parsed weak label (plate number, Latin "
        "binomial, common name, each with confidence and source words). Never overwrites plate identity. The "
        "roster's declared license (`varies`) needs AWB_LICENSE_OPT_IN=tesseract."
    )
    code_version = OcrSession.code_version
    settings_type = ZoneSettings
    check_descriptions = TEXT_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = True

    def open(self, pin_key: str, settings: ZoneSettings, inputs: StepInputs) -> OcrSession:
        return OcrSession(inputs.instruments.tesseract_reader(pin_key, settings), inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return check_text_pairs(pairs, sizes, PromptRegistry.load())
