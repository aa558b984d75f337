"""The image-fed CLIP aesthetics predictor V1 (seed 7.1, shunk031/aesthetics-predictor-v1-*), without remote code.

Plain Python: no Dagster here. The published recipe is the ``simple-aesthetics-predictor`` package
(0.1.2, ``aesthetics_predictor/v1.py``): ``AestheticsPredictorV1`` subclasses transformers'
``CLIPVisionModelWithProjection`` and adds ``predictor = nn.Linear(config.projection_dim, 1)``; its
forward L2-normalizes ``image_embeds`` and returns ``predictor(image_embeds)`` as the score. The hub
repos were written by ``push_to_hub`` of that model (the package's ``scripts/push_to_hub.py``) after
loading OpenAI CLIP's vision tower and LAION-AI/aesthetic-predictor's linear head
(``sa_0_4_vit_*_linear.pth``), so they hold a ``config.json`` with the CLIP vision config, the weights
(``vision_model.*``, ``visual_projection.weight``, ``predictor.weight``, ``predictor.bias``) and the
CLIP processor's ``preprocessor_config.json``; the package's recipe preprocesses with
``CLIPProcessor.from_pretrained`` of the same repo.

Here the tower is transformers' own ``CLIPVisionModelWithProjection`` built from the config's CLIP
vision fields (never the repo's code), the head a ``torch.nn.Linear``, and the state dict is read
from ``model.safetensors`` (or ``pytorch_model.bin`` with ``torch.load(weights_only=True)``) and must
hold exactly those keys (an old checkpoint's ``position_ids`` buffer excepted).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from safetensors import SafetensorError

from awb_dagster.instruments.common import (
    InstrumentError,
    hub_kwargs,
    norm_text,
    pin_provenance,
    pinned_file,
    quiet_transformers,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    size_text,
)
from awb_dagster.instruments.embedding import describe_processor
from awb_dagster.plates.imaging import COLOR_POLICY, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "aesthetic-v1-v1"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what push_to_hub writes (new, old transformers)
HEAD_KEYS = ("predictor.weight", "predictor.bias")
OPTIONAL_KEYS = ("vision_model.embeddings.position_ids",)  # a buffer older transformers saved
CALIBRATION = (
    "LAION aesthetics V1 linear head: regression onto mean human ratings (about 1..10) of web images "
    "(SAC and LAION ratings); uncalibrated on engravings"
)


def vision_config(config: dict[str, Any]) -> Any:
    """The repo's config.json -> transformers' CLIPVisionConfig (its CLIP vision fields only; the
    ``model_type``, ``architectures`` and any ``auto_map`` of the repo are not used)."""
    from transformers import CLIPVisionConfig

    fields = set(CLIPVisionConfig().to_dict())
    kept = {k: v for k, v in config.items() if k in fields and k not in ("model_type", "architectures", "auto_map", "transformers_version")}
    if "projection_dim" not in kept or "hidden_size" not in kept:
        raise InstrumentError("config.json lacks projection_dim or hidden_size: not a CLIP vision config")
    return CLIPVisionConfig(**kept)


class AestheticPredictorV1:
    """A loaded aesthetics predictor V1 at one pin: plate pixels -> one score."""

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
        self.instrument = instrument
        self.pin = pin
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        hub = {**hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only), "trust_remote_code": False}
        transformers = quiet_transformers()
        config_path = self._file("config.json", hub)
        self.snapshot_dir = config_path.parent  # the pin's files in the hub cache
        self.config = vision_config(json.loads(config_path.read_text(encoding="utf-8")))
        self.weight_name, state = self._state_dict(hub)
        tower = transformers.CLIPVisionModelWithProjection(self.config)
        head = torch.nn.Linear(self.config.projection_dim, 1)
        expected = set(tower.state_dict()) | set(HEAD_KEYS)
        found = set(state) - set(OPTIONAL_KEYS)
        if found != expected:
            missing, extra = sorted(expected - found)[:5], sorted(found - expected)[:5]
            raise InstrumentError(
                f"{instrument.id}@{pin.sha[:10]} {self.weight_name}: not the AestheticsPredictorV1 layout (a CLIP vision "
                f"tower with projection plus predictor.weight/bias): missing {missing}, unexpected {extra}"
            )
        tower.load_state_dict({k: v for k, v in state.items() if k in expected and k not in HEAD_KEYS}, strict=False)
        head.load_state_dict({"weight": state["predictor.weight"], "bias": state["predictor.bias"]})
        self.tower = tower.eval().to(self.device, dtype=self.dtype)
        self.head = head.eval().to(self.device, dtype=torch.float32)
        try:
            self.processor = transformers.CLIPImageProcessor.from_pretrained(instrument.id, **hub)
        except OSError as exc:
            raise InstrumentError(f"{instrument.id}@{pin.sha}: no CLIP image processor config at the pin ({exc})") from exc
        spec = describe_processor(self.processor)
        spec.update(decoder=decoder_tag(), color_policy=COLOR_POLICY)
        self.preprocess_spec = spec
        crop = f"center:{size_text(spec['crop_size'])}" if spec["do_center_crop"] else "none"
        rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
        self.preprocess_tag = (
            f"dec={spec['decoder']};color={spec['color_policy']};proc={spec['processor']};"
            f"resize={spec['resize_library']}:{spec['resample']}:antialias:{size_text(spec['size'])};crop={crop};"
            f"rescale={rescale};norm={norm_text(spec)};adapter={ADAPTER_VERSION}"
        )

    def _file(self, name: str, hub: dict[str, Any]) -> Path:
        return pinned_file(
            self.instrument, self.pin, name, cache_dir=hub["cache_dir"], local_files_only=hub["local_files_only"]
        )

    def _state_dict(self, hub: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
        present = [name for name in WEIGHT_FILES if name in set(self.pin.files)] or list(WEIGHT_FILES[:1])
        name = present[0]
        path = self._file(name, hub)
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return name, load_file(str(path))
            return name, torch.load(path, map_location="cpu", weights_only=True)
        except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise InstrumentError(f"{path}: cannot read the weights safely ({type(exc).__name__}: {exc})") from exc

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> torch.Tensor:
        """Plate file -> the model input [3, H, W]. Thread-safe; runs in the decode workers."""
        return self.prepare(load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256))

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def scores(self, prepared: list[torch.Tensor]) -> np.ndarray:
        """Prepared plates -> [B] float32 scores: predictor(image_embeds / ||image_embeds||)."""
        batch = torch.stack(prepared).to(self.device, dtype=self.dtype)
        embeds = self.tower(pixel_values=batch).image_embeds.float()
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return self.head(embeds).squeeze(-1).cpu().numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "scalar",
            "output_dtype": "float32",
            "architecture": "transformers CLIPVisionModelWithProjection + Linear(projection_dim, 1) on the L2-normalized image_embeds",
            "weight_file": self.weight_name,
            "projection_dim": self.config.projection_dim,
            "calibration": CALIBRATION,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
        }
