"""Image-classification probes (seed 7.3 WikiArt, 7.4 emotion) through transformers at a pinned sha.

Plain Python: no Dagster here. A :class:`ImageClassifier` loads the checkpoint's own architecture
(``AutoModelForImageClassification`` from its config.json: ConvNeXt, ViT, ResNet, SigLIP ... for
image classification) and image processor at the locked sha, safetensors only, never remote code.
Per plate it returns the logits and their softmax over the checkpoint's ``id2label``, in label-id
order. The label set is identified by the sha256 of its names (:func:`label_set_sha256`), and its
size is checked against the roster's declared count when there is one. None of these checkpoints
publishes a calibration, so probabilities are recorded as ``uncalibrated``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
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
from awb_dagster.instruments.embedding import describe_processor
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the adapter or its preprocessing code changes what it computes.
ADAPTER_VERSION = "classifier-v1"
UNCALIBRATED = "uncalibrated"
CALIBRATION_NOTE = (
    "softmax of the checkpoint's logits at temperature 1; no calibration is published for this "
    "checkpoint, so probabilities rank labels for one plate and are not frequencies"
)


def label_set_sha256(labels: list[str]) -> str:
    """sha256 of the label names in label-id order (JSON list, UTF-8): two checkpoints share it
    exactly when their label sets and orders are the same."""
    return hashlib.sha256(json.dumps(labels, ensure_ascii=False).encode("utf-8")).hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32 (rows sum to 1 within float32 rounding)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def classifier_tag(spec: dict[str, Any]) -> str:
    """A tag naming everything that changes pixels, and the adapter."""
    crop = f"center:{size_text(spec['crop_size'])}" if spec["do_center_crop"] else "none"
    crop_pct = f";crop_pct={spec['crop_pct']:g}" if spec.get("crop_pct") is not None else ""
    rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
    return (
        f"dec={spec['decoder']};color={spec['color_policy']};proc={spec['processor']};"
        f"resize={spec['resize_library']}:{spec['resample']}:antialias:{size_text(spec['size'])}{crop_pct};"
        f"crop={crop};rescale={rescale};norm={norm_text(spec)};adapter={ADAPTER_VERSION}"
    )


class ImageClassifier:
    """A loaded image-classification probe at one pin."""

    adapter_version = ADAPTER_VERSION

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.trust_remote_code:
            raise InstrumentError(f"{instrument.id}: the classifier adapter never runs remote code; drop trust_remote_code")
        self.instrument = instrument
        self.pin = pin
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor, self.model = load_pinned(
            instrument.id, pin, "AutoImageProcessor", "AutoModelForImageClassification", dtype=self.dtype,
            device=self.device, hub=hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only),
        )  # fmt: skip
        self.model_class = type(self.model).__name__
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.label_set_sha256 = label_set_sha256(self.labels)
        declared = instrument.expected_dim
        self.declared_labels = declared if declared is not None else len(self.labels)
        self.label_count_source = "roster expected_dim" if declared is not None else "checkpoint id2label"
        if len(self.labels) != self.declared_labels:
            raise InstrumentError(
                f"{instrument.id}@{pin.sha[:10]}: the checkpoint has {len(self.labels)} labels but roster.toml "
                f"declares expected_dim = {declared}; fix the roster entry or pin the checkpoint it describes"
            )
        spec = describe_processor(self.processor)
        crop_pct = self.processor.to_dict().get("crop_pct")
        spec.update(crop_pct=crop_pct, decoder=decoder_tag(), color_policy=COLOR_POLICY,
                    color_policy_description=COLOR_POLICY_DESCRIPTION)  # fmt: skip
        self.preprocess_spec = spec
        self.preprocess_tag = classifier_tag(spec)

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> torch.Tensor:
        """Plate file -> the model input [3, H, W]. Thread-safe; runs in the decode workers."""
        return self.prepare(load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256))

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def logits(self, prepared: list[torch.Tensor]) -> np.ndarray:
        """Prepared plates -> logits [B, labels], float32 on the CPU."""
        batch = torch.stack(prepared).to(self.device, dtype=self.dtype)
        return self.model(pixel_values=batch).logits.float().cpu().numpy()

    def calibration(self) -> dict[str, Any]:
        return {"status": UNCALIBRATED, "scale": "softmax probability over the checkpoint's labels", "note": CALIBRATION_NOTE}

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it (seed 8.3: labels, calibration, failure modes
        and intended use)."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "logits",
            "output_dtype": "float32",
            "model_class": self.model_class,
            "labels": self.labels,
            "label_set_sha256": self.label_set_sha256,
            "label_count": len(self.labels),
            "label_count_source": self.label_count_source,
            "calibration": self.calibration(),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
        }
