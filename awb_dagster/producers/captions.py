"""Captions (seed 10.2): per plate × captioner pin one caption record, made with one caption prompt
of the prompt registry and declared decoding parameters; both are in the preprocess tag and the
record, so another prompt or decoding is another record. One asset per family (``blip_captions``,
``blip2_captions``, ``qwen2_vl_captions``), all on :class:`CaptionProducer`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.constants import GROUP_TEXT
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.engine.values import Json
from awb_dagster.instruments.captioner import ADAPTER_VERSION, Captioner
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.provenance.caption_records import CAPTION_CHECK_DESCRIPTIONS, caption_table, check_caption_pairs
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.records import record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair
from awb_dagster.registry.prompts import Decoding, PromptRegistry

# The registry prompt a family runs with when the run names none: BLIP's published conditional
# captioning continues a text prefix; the instruct VLMs answer an instruction.
DEFAULT_PROMPTS = {"blip": "caption.plain", "blip2": "caption.plain", "qwen2-vl": "caption.detailed"}


class DeclaresDecoding:
    """Run settings whose decoding fields (method, beams, max new tokens, temperature, seed) are
    declared per run and recorded as one :class:`Decoding`."""

    def decoding(self) -> Decoding:
        return Decoding(**{f.name: getattr(self, f.name) for f in fields(Decoding)})


@dataclass(frozen=True)
class CaptionSettings(DeclaresDecoding):
    """``prompt_id``: a caption prompt of the registry (its highest version; empty: the family's
    default, :data:`DEFAULT_PROMPTS`); the rest: the declared :class:`Decoding`."""

    prompt_id: str = ""
    method: Literal["greedy", "beam", "sample"] = "greedy"
    num_beams: int = 1
    max_new_tokens: int = 40
    temperature: float = 1.0
    seed: int = 0


class CaptionSession:
    batch_size = 1
    code_version = ADAPTER_VERSION

    def __init__(self, captioner: Captioner, max_pixels: int):
        self.instrument = captioner
        self.store_key = captioner.pin.key
        self.run_kind = f"{captioner.instrument.family}-captions"
        self._max_pixels = max_pixels

    def run_config(self) -> dict[str, Any]:
        captioner = self.instrument
        return {"prompt": captioner.prompt.record(), "decoding": asdict(captioner.decoding), "max_pixels": self._max_pixels}

    def expected_tag(self, plate: Plate) -> str:
        return self.instrument.preprocess_tag

    def prepare(self, plate: Plate) -> Image.Image:
        image, _ = load_plate(plate.path, plate.sha256, max_pixels=self._max_pixels)
        return image

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput]:
        return [self._caption(plate, image, run) for plate, image in batch]

    def _caption(self, plate: Plate, image: Image.Image, run: OpenRun) -> PlateOutput:
        captioner = self.instrument
        caption = captioner.caption(image)
        row = {
            **record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=captioner.instrument.id, model_sha=captioner.pin.sha,
                pin_key=captioner.pin.key, preprocess_tag=captioner.preprocess_tag, run_id=run.run_id, scope="plate",
                region="caption",
            ),  # fmt: skip
            "scope": "plate", "text": caption.text, "empty_reason": caption.empty_reason, **captioner.prompt.record(),
            "decoding": json.dumps(asdict(captioner.decoding)), "token_ids": list(caption.token_ids),
            "token_count": len(caption.token_ids),
        }  # fmt: skip
        artifact = run.write_table("captions", caption_table([row]))
        return PlateOutput(plate, captioner.preprocess_tag, [row["record_id"]], artifact, {"token_count": row["token_count"]})

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        columns = ["text", "empty_reason", "token_count", "prompt_id", "prompt_version", "prompt_sha256", "decoding"]
        rows = pq.read_table(pair.artifact_path, columns=columns).to_pylist()
        row = rows[0] if rows else dict.fromkeys(columns)
        return {
            "caption": row["text"] or "",
            "empty_reason": row["empty_reason"] or "",
            "token_count": row["token_count"] or 0,
            "prompt": Json({"prompt_id": row["prompt_id"], "prompt_version": row["prompt_version"],
                            "prompt_sha256": row["prompt_sha256"], "template": self.instrument.prompt.template}),  # fmt: skip
            "decoding": Json(json.loads(row["decoding"]) if row["decoding"] else {}),
        }


class CaptionProducer:
    group = GROUP_TEXT
    code_version = ADAPTER_VERSION
    settings_type = CaptionSettings
    check_descriptions = CAPTION_CHECK_DESCRIPTIONS
    upstream: tuple[str, ...] = ()
    license_gated = True

    def __init__(self, family: str):
        self.family = family
        self.asset_name = f"{family.replace('-', '_')}_captions"
        self.pins_dimension = f"{family}_pins"
        self.description = (
            f"{family} captions (seed 10.2): per plate × pin one caption with the registry prompt (id, version, sha256) "
            "and the declared decoding (method, beams, max new tokens, temperature, seed) it was made with, the "
            "generated tokens and their count. A weak label: never plate identity. A row declaring min_memory_gb is "
            "refused before loading on a device with less free memory."
        )

    def open(self, pin_key: str, settings: CaptionSettings, inputs: StepInputs) -> CaptionSession:
        prompt = PromptRegistry.load().get(settings.prompt_id or DEFAULT_PROMPTS[self.family])
        captioner = inputs.instruments.captioner(pin_key, self.family, prompt, settings.decoding())
        return CaptionSession(captioner, inputs.max_pixels)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        return check_caption_pairs(pairs, PromptRegistry.load())


CAPTION_PRODUCERS = tuple(CaptionProducer(family) for family in DEFAULT_PROMPTS)
