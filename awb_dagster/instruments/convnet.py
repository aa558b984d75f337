"""ConvNet texture baselines (seed section 11): torchvision architectures at a pinned weight file.

Plain Python: no Dagster here. A :class:`ConvNetFeatures` builds the torchvision architecture with
random init, loads the pinned weight file (``torch.load(weights_only=True)``, strict), and returns
per plate the pooled features of the declared node (a plate embedding, like CLIP's) and the Gram
matrices of the declared layers (texture descriptors, Gatys et al.): ``G = F Fᵀ / (H·W)`` of the
layer's ``C × H·W`` activations, kept as its upper triangle (``C(C+1)/2`` values, row-major).
Preprocessing is the weight enum's own transforms; the pooled node and the Gram layers are part of
the preprocess tag, so records made with other layers never share an id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from awb_dagster.instruments.common import InstrumentError, pin_provenance, require_pin_of, resolve_device
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.registry.hub_client import PinError
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument
from awb_dagster.registry.torchvision_weights import (
    DEMO_WEIGHT_STEMS,
    installed_torchvision_version,
    torchvision_weight_file,
)

# Bump when the adapter or its preprocessing code changes what it computes.
ADAPTER_VERSION = "convnet-v1"


def tiny_convnext() -> torch.nn.Module:
    """The demo's tiny checkpoint architecture: torchvision's ConvNeXt with three narrow stages."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, None, 1)], num_classes=10)


@dataclass(frozen=True)
class ConvNetSpec:
    """One architecture: how to build it, which node is pooled into the plate vector, and which
    layers give Gram descriptors (early and middle layers: texture, at bounded channel counts)."""

    architecture: str  # torchvision.models.get_model name, or "tiny_convnext" (the demo)
    pooled_node: str  # a [B, D] node, or a [B, C, H, W] node averaged over H, W
    gram_layers: tuple[str, ...]
    build: Callable[[], torch.nn.Module] | None = None  # None: get_model(architecture, weights=None)
    transform_sizes: tuple[int, int] | None = None  # (resize, crop) overriding the enum's (demo only)


# By roster key. VGG's pooled vector is the last conv block (relu5_3) averaged: 512-d texture
# signal comparable to the other pooled baselines; its Gram layers are Gatys' relu1_1..relu3_1.
SPECS: dict[str, ConvNetSpec] = {
    "resnet50": ConvNetSpec("resnet50", "flatten", ("relu", "layer1")),
    "vgg16": ConvNetSpec("vgg16", "features.29", ("features.1", "features.6", "features.11")),
    "efficientnet-b0": ConvNetSpec("efficientnet_b0", "flatten", ("features.1", "features.2", "features.3")),
    "efficientnet-b4": ConvNetSpec("efficientnet_b4", "flatten", ("features.1", "features.2", "features.3")),
    "convnext-tiny": ConvNetSpec("convnext_tiny", "classifier.1", ("features.1", "features.3")),
    "convnext-small": ConvNetSpec("convnext_small", "classifier.1", ("features.1", "features.3")),
    "demo-tiny-convnext": ConvNetSpec(
        "tiny_convnext", "classifier.1", ("features.1", "features.3"), build=tiny_convnext, transform_sizes=(36, 32)
    ),
}


def gram_upper(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] activations -> [B, C(C+1)/2]: the upper triangle of ``F Fᵀ / (H·W)`` per image."""
    batch, channels, height, width = features.shape
    flat = features.float().reshape(batch, channels, height * width)
    gram = flat @ flat.transpose(1, 2) / (height * width)
    rows, cols = torch.triu_indices(channels, channels, device=gram.device)
    return gram[:, rows, cols]


def gram_length(channels: int) -> int:
    return channels * (channels + 1) // 2


class ConvNetFeatures:
    """A loaded torchvision ConvNet at one pin: pooled features and Gram descriptors per plate."""

    def __init__(self, instrument: Instrument, pin: Pin, *, weights_dir: Path, device: str = "auto"):
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.key not in SPECS:
            raise InstrumentError(
                f"{instrument.id}: no ConvNet adapter for key {instrument.key!r} (adapters: {', '.join(sorted(SPECS))})"
            )
        installed = installed_torchvision_version()
        pinned = pin.config.get("library_version")
        if installed != pinned:
            raise InstrumentError(
                f"{instrument.id}@{pin.sha[:10]}: pinned with torchvision {pinned}, but {installed} is installed; "
                "install the pinned version, or re-pin (`awb pin KEY --file PATH`) after review"
            )
        self.instrument = instrument
        self.pin = pin
        self.spec = SPECS[instrument.key]
        self.device = resolve_device(device)
        self.dtype = torch.float32  # Gram matrices of early layers lose too much in half precision
        try:
            self.weight_path = torchvision_weight_file(instrument, pin, weights_dir)
        except PinError as exc:
            raise InstrumentError(str(exc)) from exc
        self.transform = self._transform()
        self.extractor = self._load()
        self.preprocess_spec = self._describe_transform()
        self.preprocess_tag = self._tag()
        crop = self.preprocess_spec["crop_size"]
        probe = self.features([self.prepare(PIL.Image.new("RGB", (crop, crop), (127, 127, 127)))])
        self.dim = probe[0].shape[1]
        self.gram_lengths = {layer: int(values.shape[1]) for layer, values in probe[1].items()}
        if instrument.expected_dim is not None and instrument.expected_dim != self.dim:
            raise InstrumentError(
                f"{instrument.id}@{pin.sha[:10]}: node {self.spec.pooled_node} gives {self.dim}-d features "
                f"but roster.toml declares expected_dim {instrument.expected_dim}; fix the roster entry"
            )

    def _transform(self) -> Any:
        from torchvision.models import get_weight

        if self.instrument.weight_id in DEMO_WEIGHT_STEMS:
            # The demo's tiny checkpoint uses the ConvNeXt enum's transforms at its tiny size.
            resize, crop = self.spec.transform_sizes or (236, 224)
            return get_weight("ConvNeXt_Tiny_Weights.IMAGENET1K_V1").transforms(resize_size=resize, crop_size=crop)
        return get_weight(str(self.instrument.weight_id)).transforms()

    def _load(self) -> torch.nn.Module:
        from torchvision.models import get_model
        from torchvision.models.feature_extraction import create_feature_extractor

        model = self.spec.build() if self.spec.build else get_model(self.spec.architecture, weights=None)
        try:
            state = torch.load(self.weight_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, EOFError) as exc:  # not a state dict of this architecture
            raise InstrumentError(
                f"{self.weight_path}: not a {self.spec.architecture} state dict ({exc}); pin "
                f"{self.pin.key} of {self.instrument.id} names the wrong file"
            ) from exc
        nodes = [self.spec.pooled_node, *self.spec.gram_layers]
        extractor = create_feature_extractor(model.eval(), return_nodes={node: node for node in nodes})
        return extractor.to(self.device)

    def _describe_transform(self) -> dict[str, Any]:
        t = self.transform
        return {
            "library": f"torchvision-{installed_torchvision_version()}",
            "transform": type(t).__name__,
            "resize_size": list(t.resize_size),
            "interpolation": t.interpolation.value,
            "antialias": bool(t.antialias),
            "crop_size": int(t.crop_size[0]),
            "mean": [round(float(x), 6) for x in t.mean],
            "std": [round(float(x), 6) for x in t.std],
            "draft_min_side": 2 * int(t.resize_size[0]),
            "pooled_node": self.spec.pooled_node,
            "gram_layers": list(self.spec.gram_layers),
            "decoder": decoder_tag(),
            "color_policy": COLOR_POLICY,
            "color_policy_description": COLOR_POLICY_DESCRIPTION,
        }

    def _tag(self) -> str:
        s = self.preprocess_spec
        norm = "mean(" + ",".join(f"{x:g}" for x in s["mean"]) + ")std(" + ",".join(f"{x:g}" for x in s["std"]) + ")"
        return (
            f"dec={s['decoder']};draft=jpeg-dct-min-side-{s['draft_min_side']};color={s['color_policy']};"
            f"proc={s['library']}:{s['transform']};resize={','.join(map(str, s['resize_size']))}:"
            f"{s['interpolation']}:{'antialias' if s['antialias'] else 'no-antialias'};crop=center:{s['crop_size']};"
            f"rescale=1/255;norm={norm};pool={s['pooled_node']};gram={','.join(s['gram_layers'])};adapter={ADAPTER_VERSION}"
        )

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> torch.Tensor:
        """Plate file -> the model input [3, crop, crop]. Thread-safe; runs in the decode workers."""
        image = load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256,
                         draft_min_side=self.preprocess_spec["draft_min_side"])  # fmt: skip
        return self.prepare(image)

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def features(self, prepared: list[torch.Tensor]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Prepared plates -> (pooled features [B, dim], {layer: Gram upper triangles [B, C(C+1)/2]}),
        float32 on the CPU."""
        batch = torch.stack(prepared).to(self.device, dtype=self.dtype)
        outputs = self.extractor(batch)
        pooled = outputs[self.spec.pooled_node]
        if pooled.ndim == 4:
            pooled = pooled.mean(dim=(2, 3))
        grams = {layer: gram_upper(outputs[layer]).cpu().numpy() for layer in self.spec.gram_layers}
        return pooled.float().cpu().numpy(), grams

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "vector+gram",
            "output_dim": self.dim,
            "output_dtype": "float32",
            "architecture": self.spec.architecture,
            "weight_id": self.instrument.weight_id,
            "weight_file": self.weight_path.name,
            "library_version": self.pin.config.get("library_version"),
            "gram_lengths": self.gram_lengths,
            "device": str(self.device),
            "dtype": "float32",
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
        }
