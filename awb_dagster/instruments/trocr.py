"""TrOCR line recognition (seed section 10.1): ``microsoft/trocr-base-printed`` and
``-large-printed`` recognise one text line per image, so they read the line boxes the Tesseract
label-zone step found (:func:`line_boxes`), never whole plates. No Dagster here.

Loads ``VisionEncoderDecoderModel`` and ``TrOCRProcessor`` at the pinned sha through
safetensors, without remote code. Decoding parameters come from the prompt registry's
:class:`~awb_dagster.registry.prompts.Decoding` and go into the preprocess tag with the
processor's resize and normalisation and the line-crop rule.

Line schema (:class:`LineText`): ``line_id`` (the Tesseract line it read), ``box`` plate pixel
XYWH of the crop, ``text``, ``token_count`` (generated tokens, special tokens excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from awb_dagster.instruments.common import (
    RESAMPLE_NAMES,
    InstrumentError,
    hub_kwargs,
    norm_text,
    pin_provenance,
    quiet_transformers,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    weights_error,
)
from awb_dagster.instruments.tesseract import OcrWord
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.prompts import Decoding
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "trocr-lines-1"
LINE_MARGIN = 4  # plate pixels added around a Tesseract line box: its boxes hug the ink


@dataclass(frozen=True)
class LineText:
    line_id: str
    box: tuple[int, int, int, int]  # plate pixel XYWH
    text: str
    token_count: int


def line_boxes(words: Sequence[OcrWord], width: int, height: int, margin: int = LINE_MARGIN) -> dict[str, tuple[int, int, int, int]]:
    """Line id -> plate pixel XYWH of the union of its words' boxes, grown by ``margin`` and
    clipped to the plate, in the order the lines were found."""
    spans: dict[str, list[int]] = {}
    for word in words:
        x, y, w, h = word.box
        span = spans.setdefault(word.line_id, [x, y, x + w, y + h])
        span[:] = [min(span[0], x), min(span[1], y), max(span[2], x + w), max(span[3], y + h)]
    boxes = {}
    for line_id, (left, top, right, bottom) in spans.items():
        left, top = max(0, left - margin), max(0, top - margin)
        right, bottom = min(width, right + margin), min(height, bottom + margin)
        boxes[line_id] = (left, top, right - left, bottom - top)
    return boxes


class LineRecognizer:
    """A pinned TrOCR model reading line crops of a plate."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        decoding: Decoding = Decoding(),
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family != "trocr":
            raise InstrumentError(f"{instrument.id}: family {instrument.family!r} is not run by the TrOCR adapter")
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.decoding = decoding
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._hub_kwargs = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        self.processor, self.model = self._load()
        image_processor = self.processor.image_processor
        size = image_processor.size
        self.preprocess_spec = {
            "adapter": ADAPTER_VERSION,
            "size": f"{size['height']}x{size['width']}",
            "resample": RESAMPLE_NAMES.get(int(image_processor.resample), str(image_processor.resample)),
            "norm": norm_text({"do_normalize": image_processor.do_normalize, "image_mean": image_processor.image_mean,
                               "image_std": image_processor.image_std}),  # fmt: skip
            "lines": f"tesseract-line-boxes+margin{LINE_MARGIN}",
        }
        self.preprocess_tag = "|".join(f"{k}={v}" for k, v in self.preprocess_spec.items()) + f"|{decoding.tag()}"

    def _load(self) -> tuple[Any, torch.nn.Module]:
        transformers = quiet_transformers()
        model_id = self.instrument.id
        try:
            processor = transformers.TrOCRProcessor.from_pretrained(model_id, **self._hub_kwargs)
            model = transformers.VisionEncoderDecoderModel.from_pretrained(
                model_id, use_safetensors=True, dtype=self.dtype, **self._hub_kwargs
            )
        except OSError as exc:
            raise weights_error(model_id, self.pin, exc) from exc
        return processor, model.eval().to(self.device)

    def describe(self) -> dict[str, Any]:
        return {
            **pin_provenance(self.instrument, self.pin),
            "preprocess": self.preprocess_spec,
            "decoding": asdict(self.decoding),
            "preprocess_tag": self.preprocess_tag,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.inference_mode()
    def recognize(self, image: Image.Image, boxes: dict[str, tuple[int, int, int, int]]) -> list[LineText]:
        """The text of each line box (plate pixel XYWH) of an RGB plate, in the boxes' order."""
        if not boxes:
            return []
        crops = []
        for line_id, (x, y, w, h) in boxes.items():
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > image.width or y + h > image.height:
                raise InstrumentError(f"line {line_id} box {(x, y, w, h)} is not inside the {image.width}x{image.height} plate")
            crops.append(image.crop((x, y, x + w, y + h)))
        pixels = self.processor(images=crops, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        torch.manual_seed(self.decoding.seed)  # only sampling draws from it; greedy and beam ignore it
        generated = self.model.generate(pixels, **self.decoding.generate_kwargs())
        special = set(self.processor.tokenizer.all_special_ids)
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [
            LineText(line_id, box, text.strip(), sum(1 for token in row.tolist() if token not in special))
            for (line_id, box), text, row in zip(boxes.items(), texts, generated, strict=True)
        ]
