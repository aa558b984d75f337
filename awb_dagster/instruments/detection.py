"""Closed-vocabulary object detection (seed 6: DETR) through transformers at a pinned sha.

Plain Python: no Dagster here. An :class:`ObjectDetector` loads the checkpoint's own architecture
(``AutoModelForObjectDetection`` from its config.json) and image processor at the locked sha,
safetensors only, never remote code. Per plate it returns the boxes the processor's
``post_process_object_detection`` keeps at the run's score threshold, in plate pixels (the plate is
decoded at full size, so the target size is the plate's own), clipped to the plate, with the
class name from the checkpoint's ``id2label``.

DETR's published main revision (``facebook/detr-resnet-50``) declares a timm ResNet backbone
(``use_timm_backbone``); transformers builds it only with the ``timm`` package installed. Its
``no_timm`` revision and the demo's tiny checkpoint declare transformers' own ResNet backbone
(``backbone_config`` of model type ``resnet``) and load without timm.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
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
    quiet_transformers,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    size_text,
    weights_error,
)
from awb_dagster.instruments.embedding import describe_processor
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the adapter or its pre/post-processing code changes what it computes.
ADAPTER_VERSION = "detector-v1"
BOX_CLIPPING = "plate"  # boxes are clipped to the plate's bounds before they are recorded


@dataclass(frozen=True)
class DetectedBox:
    """One box in plate pixels: XYWH (float, clipped to the plate), score in [0, 1], label."""

    xywh: tuple[float, float, float, float]
    score: float
    label: str
    label_id: int
    clipped: bool  # the model's box reached outside the plate and was clipped


def clip_xyxy(box: list[float], width: int, height: int) -> tuple[tuple[float, float, float, float], bool]:
    """An XYXY box -> XYWH clipped to a ``width`` × ``height`` plate, and whether it was clipped."""
    x0, y0, x1, y1 = box
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, cx0), width), min(max(y1, cy0), height)
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    return (cx0, cy0, cx1 - cx0, cy1 - cy0), clipped


def detector_tag(spec: dict[str, Any], score_threshold: float) -> str:
    """A tag naming everything that changes pixels or which boxes are kept, and the adapter."""
    rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
    return (
        f"dec={spec['decoder']};color={spec['color_policy']};proc={spec['processor']};"
        f"resize={spec['resize_library']}:{spec['resample']}:antialias:{size_text(spec['size'])};"
        f"pad={spec['do_pad']};rescale={rescale};norm={norm_text(spec)};"
        f"score>={score_threshold:g};clip={BOX_CLIPPING};adapter={ADAPTER_VERSION}"
    )


def require_backbone_available(model_id: str, pin: Pin, config: Any) -> None:
    """Refuse, naming the fix, a checkpoint whose timm backbone cannot be built here."""
    backbone = getattr(config, "backbone_config", None)
    if getattr(backbone, "model_type", None) == "timm_backbone" and importlib.util.find_spec("timm") is None:
        raise InstrumentError(
            f"{model_id}@{pin.sha[:10]}: the checkpoint declares a timm backbone ({backbone.backbone}); "
            "transformers builds it only with the `timm` package, which is not installed. Install timm "
            f"(`pip install timm`), or pin the revision with transformers' own ResNet backbone "
            f"(`awb pin {model_id} --revision no_timm` for facebook/detr-resnet-50)"
        )


class ObjectDetector:
    """A loaded closed-vocabulary detector at one pin, with the run's score threshold."""

    prompt_record: tuple[str, str] | None = None  # closed vocabulary: no text prompt

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        *,
        score_threshold: float = 0.5,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.trust_remote_code:
            raise InstrumentError(
                f"{instrument.id}: the detection adapter never runs remote code; drop trust_remote_code"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise InstrumentError(f"{instrument.id}: score_threshold must be in [0, 1], got {score_threshold}")
        self.instrument = instrument
        self.pin = pin
        self.score_threshold = float(score_threshold)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        kwargs = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        try:
            config = quiet_transformers().AutoConfig.from_pretrained(instrument.id, **kwargs)
        except OSError as exc:
            raise weights_error(instrument.id, pin, exc) from exc
        require_backbone_available(instrument.id, pin, config)
        self.processor, self.model = load_pinned(
            instrument.id, pin, "AutoImageProcessor", "AutoModelForObjectDetection", dtype=self.dtype,
            device=self.device, hub=kwargs, config=config,
        )  # fmt: skip
        self.model_class = type(self.model).__name__
        id2label = self.model.config.id2label
        self.labels = {int(i): str(name) for i, name in id2label.items()}
        config_dict = self.processor.to_dict()
        spec = describe_processor(self.processor)
        spec.update(do_pad=bool(config_dict.get("do_pad")), decoder=decoder_tag(), color_policy=COLOR_POLICY,
                    color_policy_description=COLOR_POLICY_DESCRIPTION)  # fmt: skip
        self.preprocess_spec = spec
        self.preprocess_tag = detector_tag(spec, self.score_threshold)

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> PIL.Image.Image:
        """Plate file -> RGB at full size (boxes are in its pixels). Thread-safe."""
        return load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256)

    @torch.inference_mode()
    def detect(self, image: PIL.Image.Image) -> list[DetectedBox]:
        """One plate -> its boxes above the score threshold, best first."""
        inputs = self.processor(images=[image], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        pixel_mask = inputs.get("pixel_mask")
        if pixel_mask is not None:
            pixel_mask = pixel_mask.to(self.device)
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        width, height = image.size
        result = self.processor.post_process_object_detection(
            outputs, threshold=self.score_threshold, target_sizes=[(height, width)]
        )[0]
        boxes = []
        for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist()):
            xywh, clipped = clip_xyxy(box, width, height)
            boxes.append(DetectedBox(xywh, float(score), self.labels.get(int(label), str(label)), int(label), clipped))
        return sorted(boxes, key=lambda b: -b.score)

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "boxes",
            "model_class": self.model_class,
            "labels": [self.labels[i] for i in sorted(self.labels)],
            "score_threshold": self.score_threshold,
            "box_clipping": BOX_CLIPPING,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
        }
