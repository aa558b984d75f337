"""Semantic segmentation (Mask2Former, e.g. ADE20K labels) through transformers at a pinned sha.

Plain Python: no Dagster here. A :class:`SemanticSegmenter` is built from a registry instrument
(family ``mask2former``) and its pin, loads ``Mask2FormerForUniversalSegmentation`` and its image
processor once, and turns one plate into a class map at the plate's resolution. The labels are the
checkpoint's own ``config.id2label`` (ADE20K's 150 names for the real model). This is semantics
asserted by a model trained on scene photographs: it is kept apart from the class-agnostic SAM
masks and never merged with them.

Pipeline of one plate (every step is named in the preprocess tag):

1. The plate is decoded by the color policy (alpha composited over white), exactly as for SAM.
2. The model's own image processor resizes, rescales and normalizes it. One plate per forward
   pass: the processor pads a batch to its largest image, and the semantic post-processing does
   not remove padding, so a batch of different sizes would shift the maps.
3. ``post_process_semantic_segmentation`` (transformers) combines query classes and masks into
   per-class scores, resizes them bilinearly to the plate size (at most ``max_label_side`` on the
   longest side: the scores are ``num_labels`` float planes, 150 × plate pixels × 4 bytes for
   ADE20K) and takes the argmax. A capped map is upscaled to the plate by nearest neighbour; the
   model's own mask resolution is a quarter of its input side (about 96 px), far below the cap.
4. Alpha policy: pixels whose alpha is 0 get the reserved class id :func:`transparent_id` with the
   label ``"transparent"``; every other pixel keeps the model's class.

Class map: ``uint8`` when every model class id is below 255, else ``uint16``; the reserved
transparent id is the dtype's maximum (255 or 65535). Stored as a lossless PNG (``L`` or
``I;16``).

Record schema (one row per class present on the plate, see
:func:`awb_dagster.provenance.records.class_area_schema`; rows are built by
:func:`awb_dagster.provenance.rows.class_area_rows`):

- ``class_id``, ``label``: the class (``config.id2label``) or the transparent id and label.
- ``pixel_count``: pixels of that class in the class map; the rows of a plate sum to its area.
- ``area_fraction`` = pixel_count / plate pixels.
- ``class_map_path`` / ``class_map_sha256``: the class map PNG (relative to the run directory)
  and the sha256 of its file bytes.
- ``record_id``: scope ``plate``, region ``class:<class_id>``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from awb_dagster.instruments.common import (
    InstrumentError,
    hub_kwargs,
    norm_text,
    pin_provenance,
    quiet_transformers,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    size_text,
    weights_error,
)
from awb_dagster.instruments.embedding import describe_processor
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, working_size
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the segmenter or its pre/post-processing code changes what it computes.
ADAPTER_VERSION = "mask2former-semantic-v1"

TRANSPARENT_LABEL = "transparent"
ALPHA_POLICY = "transparent-class-v1"
ALPHA_POLICY_DESCRIPTION = (
    f"{ALPHA_POLICY}: the model sees the plate composited over white (color policy); pixels whose "
    f"alpha is 0 then get the reserved class id (the class map dtype's maximum, 255 or 65535) "
    f"labelled {TRANSPARENT_LABEL!r}, whatever the model predicted there"
)
LABEL_UPSCALE = "torch-nearest"  # a class map capped by max_label_side to plate resolution


@dataclass(frozen=True)
class SegmenterSettings:
    """What changes the class map besides the model and its processor."""

    # Class scores are resized to at most this longest side before the argmax (memory bound);
    # larger plates get the capped map upscaled by nearest neighbour.
    max_label_side: int = 1024

    def __post_init__(self) -> None:
        if self.max_label_side < 1:
            raise InstrumentError(f"segmenter setting max_label_side must be >= 1, got {self.max_label_side}")


def class_map_dtype(num_labels: int) -> np.dtype:
    """``uint8`` when ids 0..num_labels-1 leave 255 free for the transparent class, else ``uint16``."""
    for dtype in (np.uint8, np.uint16):
        if num_labels <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InstrumentError(f"{num_labels} classes do not fit a uint16 class map with a reserved transparent id")


def transparent_id(dtype: np.dtype) -> int:
    """The class id reserved for transparent pixels: the dtype's maximum."""
    return int(np.iinfo(dtype).max)


def class_map_png(class_map: np.ndarray) -> bytes:
    """The class map as lossless PNG bytes (``L`` for uint8, ``I;16`` for uint16)."""
    if class_map.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"class map dtype is {class_map.dtype}, not uint8 or uint16")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(class_map)).save(buffer, format="PNG")  # L or I;16
    return buffer.getvalue()


def decode_class_map(data: bytes | Path) -> np.ndarray:
    """A class map PNG (bytes or path) back as a ``uint8`` or ``uint16`` array [height, width]."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        if image.mode == "L":
            return np.asarray(image, dtype=np.uint8)
        if image.mode in ("I;16", "I"):
            return np.asarray(image).astype(np.uint16)
        raise ValueError(f"class map PNG has mode {image.mode}, not L or I;16")


@dataclass(frozen=True)
class ClassMap:
    """One plate's class map at plate resolution, with the names of its ids."""

    class_ids: np.ndarray  # uint8 or uint16 [height, width]
    labels: dict[int, str]  # every model class id -> label, plus the transparent id

    def pixel_counts(self) -> dict[int, int]:
        """Pixels per class id present on the plate, most pixels first (ties by id)."""
        counts = np.bincount(self.class_ids.ravel(), minlength=1)
        present = np.flatnonzero(counts)
        order = sorted(present.tolist(), key=lambda i: (-int(counts[i]), i))
        return {int(i): int(counts[i]) for i in order}


def describe_mask2former_processor(processor: Any) -> dict[str, Any]:
    """Every Mask2Former image processor setting that changes pixels, in a stable order."""
    spec = describe_processor(processor)
    spec["size_divisor"] = processor.to_dict().get("size_divisor")
    return spec


def preprocess_tag(spec: dict[str, Any], settings: SegmenterSettings) -> str:
    """Everything that changes pixels or labels; two pipelines never share a tag."""

    sizes, norm = size_text, norm_text(spec)
    rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
    resize = (
        f"{spec['resize_library']}:{spec['resample']}:antialias:{sizes(spec['size'])}:div={spec['size_divisor']}"
        if spec["do_resize"]
        else "none"
    )
    return (
        f"dec={spec['decoder']};color={spec['color_policy']};alpha={spec['alpha_policy']};"
        f"proc={spec['processor']}:resize={resize}:rescale={rescale}:norm={norm}:batch=1;"
        f"post={spec['post_processing']}:max-side={settings.max_label_side};"
        f"upscale={spec['label_upscale']};adapter={ADAPTER_VERSION}"
    )


class SemanticSegmenter:
    """A loaded Mask2Former instrument at one pin, with fixed settings."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        settings: SegmenterSettings = SegmenterSettings(),
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family != "mask2former":
            raise InstrumentError(
                f"{instrument.id}: family {instrument.family!r} is not run by the Mask2Former semantic adapter"
            )
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.settings = settings
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._hub_kwargs = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        self.processor, self.model = self._load()
        self._probe_processor()
        id2label = self.model.config.id2label
        self.num_labels = self.model.config.num_labels  # the argmax runs over ids 0..num_labels-1
        self.class_map_dtype = class_map_dtype(self.num_labels)
        self.transparent_id = transparent_id(self.class_map_dtype)
        self.labels = {int(i): str(name) for i, name in sorted(id2label.items(), key=lambda item: int(item[0]))}
        self.labels[self.transparent_id] = TRANSPARENT_LABEL

        import transformers

        spec = describe_mask2former_processor(self.processor)
        spec.update(
            decoder=decoder_tag(),
            color_policy=COLOR_POLICY,
            color_policy_description=COLOR_POLICY_DESCRIPTION,
            alpha_policy=ALPHA_POLICY,
            alpha_policy_description=ALPHA_POLICY_DESCRIPTION,
            post_processing=f"transformers-{transformers.__version__}:post_process_semantic_segmentation:bilinear",
            label_upscale=LABEL_UPSCALE,
        )
        self.preprocess_spec = spec
        self.preprocess_tag = preprocess_tag(spec, settings)

    def _load(self) -> tuple[Any, torch.nn.Module]:
        transformers = quiet_transformers()
        model_id = self.instrument.id
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(model_id, **self._hub_kwargs)
            model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
                model_id, use_safetensors=True, dtype=self.dtype, **self._hub_kwargs
            )
        except OSError as exc:
            raise weights_error(model_id, self.pin, exc) from exc
        except ImportError as exc:  # Mask2FormerForUniversalSegmentation builds its loss, which needs scipy
            raise InstrumentError(f"{model_id}: {exc}".strip()) from exc
        return processor, model.eval().to(self.device)

    def _probe_processor(self) -> None:
        """Fail at load, naming the pin, when the pinned processor config cannot preprocess a plate
        (e.g. a legacy integer ``size`` without ``max_size``, which transformers 5 cannot resize by)."""
        try:
            self.processor(images=Image.new("RGB", (48, 32), (127, 127, 127)), return_tensors="pt")
        except ValueError as exc:
            raise InstrumentError(
                f"{self.instrument.id}@{self.pin.sha}: its image processor config cannot preprocess a plate "
                f"({exc}); pin a revision whose preprocessor_config.json transformers can use"
            ) from exc

    @torch.inference_mode()
    def segment(self, image: Image.Image, opaque: np.ndarray | None = None) -> ClassMap:
        """The class map of an RGB plate at its own resolution (``opaque``: bool [height, width])."""
        width, height = image.size
        if opaque is not None and opaque.shape != (height, width):
            raise InstrumentError(f"alpha mask is {opaque.shape[::-1]}, the plate {image.size}")
        inputs = self.processor(images=image, return_tensors="pt")
        outputs = self.model(
            pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
            pixel_mask=inputs["pixel_mask"].to(self.device),
        )
        # Scores in float32: bfloat16 ties would make the argmax depend on the dtype.
        outputs.class_queries_logits = outputs.class_queries_logits.float()
        outputs.masks_queries_logits = outputs.masks_queries_logits.float()
        label_w, label_h = working_size(width, height, self.settings.max_label_side)
        classes = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[(label_h, label_w)])[0]
        if (label_w, label_h) != (width, height):
            classes = torch.nn.functional.interpolate(
                classes[None, None].float(), size=(height, width), mode="nearest"
            )[0, 0]
        class_ids = classes.to(torch.int64).cpu().numpy().astype(self.class_map_dtype)
        if opaque is not None:
            class_ids[~opaque] = self.transparent_id
        return ClassMap(class_ids=class_ids, labels=self.labels)

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it, labels and settings included."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "output_kind": "class-map",
            "output_dtype": str(self.class_map_dtype),
            "model_class": "Mask2FormerForUniversalSegmentation",
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
            "segmenter": asdict(self.settings),
            "num_labels": self.num_labels,
            "transparent_id": self.transparent_id,
            "id2label": {str(i): name for i, name in self.labels.items()},
        }

