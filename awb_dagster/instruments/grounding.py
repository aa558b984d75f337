"""Text-conditioned object detection (seed 6: GroundingDINO) through transformers at a pinned sha.

Plain Python: no Dagster here. A :class:`GroundedDetector` loads the checkpoint's own architecture
(``AutoModelForZeroShotObjectDetection``: GroundingDinoForObjectDetection with its BERT text tower)
and processor (``AutoProcessor``: the image processor and the BERT tokenizer files of the repo) at
the locked sha, safetensors only, never remote code. The text query is one prompt of the prompt
registry (task ``detection``: lower-case phrases separated by `` . ``); its id, version and sha256
go into the preprocess tag and every box. Per plate it returns the boxes the processor's
``post_process_grounded_object_detection`` keeps at the run's box and text thresholds, in plate
pixels (full-size decode), clipped to the plate; a box's label is the prompt phrase its tokens
above the text threshold spell, special tokens dropped (empty when no token passes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import PIL
import torch

from awb_dagster.instruments.common import (
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
from awb_dagster.instruments.detection import BOX_CLIPPING, DetectedBox, clip_xyxy
from awb_dagster.instruments.embedding import describe_processor
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.prompts import Prompt
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "grounded-detector-v1"
UNMATCHED_LABEL_ID = -1  # a phrase that is not one of the prompt's phrases (tokens of several, or none)


def prompt_phrases(prompt: Prompt) -> list[str]:
    """The phrases of a detection prompt's text (``"bird . egg ."`` -> ``["bird", "egg"]``)."""
    return [phrase.strip() for text in prompt.texts() for phrase in text.split(".") if phrase.strip()]


class GroundedDetector:
    """A loaded GroundingDINO at one pin, with one registry prompt and the run's thresholds."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        prompt: Prompt,
        *,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.trust_remote_code:
            raise InstrumentError(
                f"{instrument.id}: the grounded adapter never runs remote code; drop trust_remote_code"
            )
        if prompt.task != "detection":
            raise InstrumentError(
                f"prompt {prompt.id}@v{prompt.version} is a {prompt.task} prompt, not a detection prompt"
            )
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InstrumentError(f"{instrument.id}: {name} must be in [0, 1], got {value}")
        self.instrument = instrument
        self.pin = pin
        self.prompt = prompt
        self.phrases = prompt_phrases(prompt)
        self.text = " . ".join(self.phrases) + " ."
        self.score_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor, self.model = load_pinned(
            instrument.id, pin, "AutoProcessor", "AutoModelForZeroShotObjectDetection", dtype=self.dtype,
            device=self.device, hub=hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only),
        )  # fmt: skip
        self.model_class = type(self.model).__name__
        self._special_tokens = set(self.processor.tokenizer.all_special_tokens)
        image_processor = self.processor.image_processor
        spec = describe_processor(image_processor)
        spec.update(do_pad=bool(image_processor.to_dict().get("do_pad")),
                    tokenizer=type(self.processor.tokenizer).__name__, decoder=decoder_tag(), color_policy=COLOR_POLICY,
                    color_policy_description=COLOR_POLICY_DESCRIPTION)  # fmt: skip
        self.preprocess_spec = spec
        rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
        self.preprocess_tag = (
            f"dec={spec['decoder']};color={spec['color_policy']};proc={spec['processor']};tok={spec['tokenizer']};"
            f"resize={spec['resize_library']}:{spec['resample']}:antialias:{size_text(spec['size'])};"
            f"pad={spec['do_pad']};rescale={rescale};norm={norm_text(spec)};{prompt.tag()};"
            f"box>={self.score_threshold:g};text>={self.text_threshold:g};clip={BOX_CLIPPING};adapter={ADAPTER_VERSION}"
        )

    @property
    def prompt_record(self) -> tuple[str, str]:
        """(prompt id, prompt sha256) as every box record carries them."""
        return self.prompt.id, self.prompt.sha256

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> PIL.Image.Image:
        """Plate file -> RGB at full size (boxes are in its pixels). Thread-safe."""
        return load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256)

    @torch.inference_mode()
    def detect(self, image: PIL.Image.Image) -> list[DetectedBox]:
        """One plate -> its boxes above the box threshold, best first, labelled by prompt phrase."""
        inputs = self.processor(images=[image], text=self.text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        width, height = image.size
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.score_threshold, text_threshold=self.text_threshold,
            target_sizes=[(height, width)],
        )[0]  # fmt: skip
        boxes = []
        for box, score, text in zip(result["boxes"].tolist(), result["scores"].tolist(), result["text_labels"]):
            xywh, clipped = clip_xyxy(box, width, height)
            # The decoded span may hold special tokens ([SEP]) that passed the text threshold: not phrase words.
            phrase = " ".join(word for word in text.split() if word not in self._special_tokens)
            label_id = self.phrases.index(phrase) if phrase in self.phrases else UNMATCHED_LABEL_ID
            boxes.append(DetectedBox(xywh, float(score), phrase, label_id, clipped))
        return sorted(boxes, key=lambda b: -b.score)

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it, with the prompt it ran."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "boxes",
            "model_class": self.model_class,
            "prompt": {**self.prompt.record(), "text": self.text, "phrases": self.phrases},
            "box_threshold": self.score_threshold,
            "text_threshold": self.text_threshold,
            "box_clipping": BOX_CLIPPING,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
        }
