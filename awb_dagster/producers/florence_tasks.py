"""Florence-2 tasks (seed 10.2, issue 11: "each Florence-2 task prompt is its own instrument"): one
asset per text task token on the ``florence2_pins`` partitions, ``florence2_caption``
(``<CAPTION>``), ``florence2_detailed_caption``, ``florence2_more_detailed_caption`` and
``florence2_ocr``. Each asset runs only its own registry prompt, seals its records under its own
pair key (:func:`~awb_dagster.provenance.caption_records.florence_pair_key`), so one task's records
never stand in for another's, and carries the caption contract (prompt id / version / sha256 and
the declared decoding in the preprocess tag and every record). The model runs through the same
:class:`~awb_dagster.instruments.captioner.Captioner` as the other captioners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from awb_dagster.engine.producer import StepInputs
from awb_dagster.instruments.captioner import Captioner
from awb_dagster.producers.captions import CaptionProducer, CaptionSession, DeclaresDecoding
from awb_dagster.provenance.caption_records import florence_pair_key
from awb_dagster.registry.prompts import PromptRegistry

FAMILY = "florence2"
# Task slug -> the registry prompt (a Florence-2 task token) its asset runs.
TASK_PROMPTS = {
    "caption": "florence.caption",
    "detailed_caption": "florence.detailed-caption",
    "more_detailed_caption": "florence.more-detailed-caption",
    "ocr": "florence.ocr",
}


@dataclass(frozen=True)
class FlorenceTaskSettings(DeclaresDecoding):
    """The declared :class:`Decoding` of a run. Defaults: the converted repos' published recipe
    (beam search with 3 beams, ``max_new_tokens`` 1024); the prompt is the asset's own."""

    method: Literal["greedy", "beam", "sample"] = "beam"
    num_beams: int = 3
    max_new_tokens: int = 1024
    temperature: float = 1.0
    seed: int = 0


class FlorenceTaskSession(CaptionSession):
    def __init__(self, captioner: Captioner, max_pixels: int, task: str):
        super().__init__(captioner, max_pixels)
        self.store_key = florence_pair_key(captioner.pin.key, task)
        self.run_kind = f"{FAMILY}-{task.replace('_', '-')}"

    def run_config(self) -> dict[str, Any]:
        return {**super().run_config(), "task": self.instrument.task}


class FlorenceTaskProducer(CaptionProducer):
    settings_type = FlorenceTaskSettings

    def __init__(self, task: str):
        super().__init__(FAMILY)
        self.task = task
        self.prompt_id = TASK_PROMPTS[task]
        self.asset_name = f"{FAMILY}_{task}"
        token = PromptRegistry.load().get(self.prompt_id).template
        self.description = (
            f"Florence-2 {token} (seed 10.2): its own instrument, one record per plate × florence2 pin with the "
            f"registry prompt {self.prompt_id} (id, version, sha256) and the declared decoding (method, beams, max new "
            "tokens, temperature, seed); the text is transformers' Florence2Processor.post_process_generation answer "
            "for the task, with the generated tokens and their count. A weak label: never plate identity. A row "
            "declaring min_memory_gb is refused before loading on a device with less free memory."
        )

    def open(self, pin_key: str, settings: FlorenceTaskSettings, inputs: StepInputs) -> FlorenceTaskSession:
        prompt = PromptRegistry.load().get(self.prompt_id)
        captioner = inputs.instruments.captioner(pin_key, FAMILY, prompt, settings.decoding())
        return FlorenceTaskSession(captioner, inputs.max_pixels, self.task)


FLORENCE_TASK_PRODUCERS = tuple(FlorenceTaskProducer(task) for task in TASK_PROMPTS)
