"""Captioners and VLMs (seed 10.2): BLIP, BLIP-2 (OPT and FLAN-T5), Florence-2 and Qwen2-VL caption
a whole plate with one prompt of the prompt registry and declared decoding parameters. No Dagster.

Each family loads through its transformers classes at the pinned sha, weights through safetensors,
no remote code (:data:`ARCHITECTURES`). A roster row that declares ``min_memory_gb`` is refused
before anything loads on a device with less free memory (:func:`~awb_dagster.instruments.memory.require_memory`).

Prompt use follows each model's published recipe: BLIP and BLIP-2 take the template as text the
model continues or answers (BLIP-2's processor puts its ``<image>`` query tokens in front); Qwen2-VL
takes it as the user turn of its own chat template, after the image; Florence-2 takes one task token
(:mod:`awb_dagster.instruments.florence`). ``text`` is what the model generated after the prompt,
decoded without special tokens; ``token_ids`` are those generated ids that are not special tokens and
``token_count`` their number. Florence-2's text is its processor's ``post_process_generation`` answer
for the task, whose ``<loc_N>`` tokens are content: only the sequence framing is dropped there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from awb_dagster.instruments.common import (
    RESAMPLE_NAMES,
    InstrumentError,
    hub_kwargs,
    load_pinned,
    norm_text,
    pin_provenance,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    size_text,
)
from awb_dagster.instruments.florence import florence_answer, florence_task
from awb_dagster.instruments.memory import require_memory
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.prompts import Decoding, Prompt
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "captioner-1"


@dataclass(frozen=True)
class Architecture:
    processor: str
    model: str
    chat: bool  # the prompt goes through the processor's chat template (an instruct VLM)


ARCHITECTURES = {
    "blip": Architecture("BlipProcessor", "BlipForConditionalGeneration", chat=False),
    "blip2": Architecture("Blip2Processor", "Blip2ForConditionalGeneration", chat=False),
    "florence2": Architecture("Florence2Processor", "Florence2ForConditionalGeneration", chat=False),
    "qwen2-vl": Architecture("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration", chat=True),
}


@dataclass(frozen=True)
class Caption:
    text: str
    token_ids: tuple[int, ...]  # generated, special tokens excluded
    empty_reason: str | None  # why ``text`` is empty; None when it is not


class Captioner:
    """A pinned captioning model with one registry prompt and declared decoding."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        prompt: Prompt,
        decoding: Decoding = Decoding(),
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family not in ARCHITECTURES:
            raise InstrumentError(f"{instrument.id}: family {instrument.family!r} is not run by the captioner adapter")
        self.task = florence_task(prompt) if instrument.family == "florence2" else None
        if self.task is None and (prompt.task != "caption" or prompt.labels):
            raise InstrumentError(f"prompt {prompt.id} is a {prompt.task!r} prompt; a captioner takes one 'caption' prompt")
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument, self.pin, self.prompt, self.decoding = instrument, pin, prompt, decoding
        self.architecture = ARCHITECTURES[instrument.family]
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.memory = require_memory(instrument, self.device, self.dtype)  # before any weights are read
        self.processor, self.model = load_pinned(
            instrument.id, pin, self.architecture.processor, self.architecture.model, dtype=self.dtype, device=self.device,
            hub=hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only),
        )  # fmt: skip
        if instrument.family == "blip2" and (self.processor.num_query_tokens is None or self.model.config.image_token_index is None):
            raise InstrumentError(
                f"{instrument.id}@{pin.sha}: a BLIP-2 checkpoint needs num_query_tokens in processor_config.json and "
                "image_token_index in config.json (transformers 5 puts the image's query tokens into the text through "
                "them); this revision lacks one: pin a revision of the repo that has both"
            )
        self.preprocess_spec = self._preprocess_spec()
        self.preprocess_tag = "|".join(f"{k}={v}" for k, v in self.preprocess_spec.items()) + f"|{prompt.tag()}|{decoding.tag()}"

    def _preprocess_spec(self) -> dict[str, str]:
        image_processor = self.processor.image_processor
        spec = {"adapter": ADAPTER_VERSION, "size": size_text(dict(image_processor.size))}
        if self.architecture.chat:  # dynamic resolution: size holds the pixel bounds, the patches make the grid
            spec["patch"] = f"{image_processor.patch_size}x{image_processor.merge_size}"
        spec["resample"] = RESAMPLE_NAMES.get(int(image_processor.resample), str(image_processor.resample))
        spec["norm"] = norm_text({"do_normalize": image_processor.do_normalize, "image_mean": image_processor.image_mean,
                                  "image_std": image_processor.image_std})  # fmt: skip
        if self.architecture.chat:
            spec["chat"] = "processor-chat-template"
        if self.task is not None:  # Florence-2: CLIPImageProcessor to a fixed square, no crop in the converted repos
            spec["crop"] = size_text(dict(image_processor.crop_size)) if image_processor.do_center_crop else "none"
            spec["task"] = f"{self.task}+post_process_generation"
        return spec

    def describe(self) -> dict[str, Any]:
        return {
            **pin_provenance(self.instrument, self.pin),
            "preprocess": self.preprocess_spec,
            "prompt": {**self.prompt.record(), "template": self.prompt.template},
            "decoding": asdict(self.decoding),
            # the pinned generation_config.json's settings the declared decoding leaves in force (e.g. Florence-2's
            # no_repeat_ngram_size and forced <s>/</s>): part of the pin, shown here
            "generation_config": self.model.generation_config.to_diff_dict(),
            "preprocess_tag": self.preprocess_tag,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "min_memory_gb": self.instrument.min_memory_gb,
            "device_memory": None if self.memory is None else asdict(self.memory),
        }

    def _inputs(self, image: Image.Image) -> tuple[dict[str, Any], int]:
        """Model inputs and the number of leading output ids that repeat the prompt."""
        if self.architecture.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt.template}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(images=[image], text=[text], return_tensors="pt")
        else:
            inputs = self.processor(images=image, text=self.prompt.template, return_tensors="pt")
        length = inputs["input_ids"].shape[1]
        if self.instrument.family == "blip":
            echoed = length - 1  # BLIP's generate starts from its [DEC] token and drops the trailing [SEP]
        elif self.task is not None or (self.instrument.family == "blip2" and not self.model.config.use_decoder_only_language_model):
            echoed = 0  # Florence-2, FLAN-T5: the prompt goes to the encoder, the decoder output is all new
        else:
            echoed = length
        return inputs, echoed

    @torch.inference_mode()
    def caption(self, image: Image.Image) -> Caption:
        """The caption of one RGB plate image."""
        inputs, echoed = self._inputs(image)
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}
        torch.manual_seed(self.decoding.seed)  # only sampling draws from it; greedy and beam ignore it
        generated = self.model.generate(**inputs, **self.decoding.generate_kwargs())[0, echoed:]
        if self.task is not None:
            text, ids = florence_answer(self.processor, generated.tolist(), self.task, image)
        else:
            tokenizer = self.processor.tokenizer
            special = set(tokenizer.all_special_ids)
            ids = tuple(int(token) for token in generated.tolist() if int(token) not in special)
            text = tokenizer.decode(generated, skip_special_tokens=True).strip()
        reason = None
        if not text:
            reason = (
                f"no text: the model generated {len(ids)} non-special token(s) within max_new_tokens="
                f"{self.decoding.max_new_tokens}" + (", all whitespace" if ids else "")
            )
        return Caption(text, ids, reason)
