"""U^2-Net foreground prior (seed 5.4, ``Carve/u2net-universal``) through carvekit's architecture.

Plain Python: no Dagster here. The published recipe is carvekit 4.1.2's (the package that
publishes ``Carve/u2net-universal``):

- Weights: ``full_weights.pth`` in the hub repo (carvekit's ``utils/download_models.py`` fetches
  it from ``Carve/u2net-universal`` at revision ``10305d785481cf4b2eee1d447c39cd6e5f43d74b`` and
  stores it as ``u2net.pth``), a legacy ``torch.save`` pickle of a plain ``OrderedDict`` state dict
  of float tensors (176 MB). carvekit loads it with ``load_state_dict`` into
  ``carvekit.ml.arch.u2net.u2net.U2NETArchitecture("full", out_ch=1)``. Here it is read from the
  home's hub cache at the pinned sha with ``torch.load(weights_only=True)`` and loaded strictly.
- Preprocessing (``carvekit.ml.wrap.u2net.U2NET.data_preprocessing``): resize to the input size
  (320 × 320, the class default) with PIL bicubic, divide by the image's maximum value (not 255),
  ImageNet mean/std per channel, computed in float64 then cast to float32.
- Post-processing (``U2NET.data_postprocessing``): the fused side output ``d0`` (already a
  sigmoid) is min-max normalized per image, scaled to 0..255, made an 8-bit ``L`` image and
  resized to the plate size with PIL bicubic: the saliency map.

What is this adapter's own (carvekit has no binary mask; its pipelines use the soft map as alpha):
the foreground mask is ``saliency >= threshold`` (default 128, i.e. 0.5 of the normalized map),
minus the plate's transparent pixels; a constant ``d0`` (min == max, where carvekit would divide
by zero) gives an all-zero saliency map. Because of the min-max step every plate with any
contrast in ``d0`` gets some foreground: ``d0_min``/``d0_max`` are kept so a weak map can be seen.

carvekit's ``U2NETArchitecture`` also takes a layer configuration dict (same module names, other
channel sizes): the demo's tiny checkpoint is that class with tiny channels (:data:`TINY_LAYERS`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from awb_dagster.instruments.common import (
    InstrumentError, pin_provenance, pinned_file, require_pin_of, resolve_device, resolve_dtype,
)  # fmt: skip
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the segmenter or its pre/post-processing code changes what it computes.
ADAPTER_VERSION = "u2net-foreground-v1"
CARVEKIT_VERSION = "4.1.2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALPHA_POLICY = "transparent-background-v1"
ALPHA_POLICY_DESCRIPTION = (
    f"{ALPHA_POLICY}: the model sees the plate composited over white (color policy); pixels whose alpha is 0 "
    "are never foreground, whatever the saliency there"
)

# carvekit's U2NETArchitecture layer dict: {stage: [name, (height, in_ch, mid_ch, out_ch[, dilated]), side_ch]}.
# The same eleven stages and module names as "full", with tiny channels (4 mid, 8 out).
TINY_LAYERS: dict[str, list[Any]] = {
    "stage1": ["En_1", (7, 3, 4, 8), -1],
    "stage2": ["En_2", (6, 8, 4, 8), -1],
    "stage3": ["En_3", (5, 8, 4, 8), -1],
    "stage4": ["En_4", (4, 8, 4, 8), -1],
    "stage5": ["En_5", (4, 8, 4, 8, True), -1],
    "stage6": ["En_6", (4, 8, 4, 8, True), 8],
    "stage5d": ["De_5", (4, 16, 4, 8, True), 8],
    "stage4d": ["De_4", (4, 16, 4, 8), 8],
    "stage3d": ["De_3", (5, 16, 4, 8), 8],
    "stage2d": ["De_2", (6, 16, 4, 8), 8],
    "stage1d": ["De_1", (7, 16, 4, 8), 8],
}


@dataclass(frozen=True)
class U2NetSpec:
    """One published U^2-Net weight file: its architecture configuration and input size."""

    layers: str | dict[str, list[Any]]  # "full" (carvekit's) or a layer dict of the same class
    input_size: int  # square side the plate is resized to
    sha512: str | None = None  # the weight file's checksum as its publisher's loader verifies it


SPECS: dict[str, U2NetSpec] = {
    # carvekit U2NET's default input_image_size; the sha512 is carvekit 4.1.2's MODELS_CHECKSUMS["u2net.pth"].
    "u2net-universal": U2NetSpec("full", 320, (
        "16f8125e2fedd8c85db0e001ee15338b4aa2fda77bab8ba70c25ebea1533fda5"
        "ee70a909b934a9bd495b432cef89d629f00a07858a517742476fa8b346de24f7"
    )),  # fmt: skip
    "demo-tiny-u2net": U2NetSpec(TINY_LAYERS, 64),
}


@dataclass(frozen=True)
class ForegroundSettings:
    """What turns the saliency map into a mask."""

    threshold: int = 128  # saliency (0..255) at or above which a pixel is foreground

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= 255:
            raise InstrumentError(f"foreground setting threshold must be in 1..255, got {self.threshold}")


@dataclass(frozen=True)
class Foreground:
    """One plate's foreground prior at plate resolution."""

    saliency: np.ndarray  # uint8 [height, width]: carvekit's post-processed map
    mask: np.ndarray  # bool [height, width]
    alpha_excluded: int  # pixels at or above the threshold left out because they are transparent
    d0_min: float  # the raw fused output's range before min-max normalization
    d0_max: float


def u2net_architecture(layers: str | dict[str, list[Any]]) -> torch.nn.Module:
    """carvekit's ``U2NETArchitecture(layers, out_ch=1)``. Importing ``carvekit.ml`` seeds the
    process's random generators (``fix_seed``) and sets cuDNN flags: they are put back here."""
    state, py_state = torch.random.get_rng_state(), random.getstate()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        from carvekit.ml.arch.u2net.u2net import U2NETArchitecture
    except ImportError as exc:
        raise InstrumentError(
            f"the U^2-Net adapter needs carvekit=={CARVEKIT_VERSION} ({exc}); install it without its "
            f"dependencies: `pip install --no-deps carvekit=={CARVEKIT_VERSION}` (scripts/setup.sh does)"
        ) from exc
    finally:
        torch.random.set_rng_state(state)
        random.setstate(py_state)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    return U2NETArchitecture(cfg_type=layers, out_ch=1)


def preprocess(image: Image.Image, input_size: int) -> torch.Tensor:
    """carvekit's ``U2NET.data_preprocessing``: [1, 3, S, S] float32."""
    resized = np.array(image.convert("RGB").resize((input_size, input_size), resample=Image.Resampling.BICUBIC), dtype=float)
    peak = np.max(resized)
    if peak != 0:
        resized /= peak
    normalized = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(normalized.transpose((2, 0, 1))[None]).type(torch.FloatTensor)


def postprocess(d0: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """carvekit's ``U2NET.data_postprocessing`` of one [1, S, S] map: uint8 [height, width] at
    ``size`` (width, height); a constant map gives zeros (carvekit would divide by zero)."""
    low, high = torch.min(d0), torch.max(d0)
    if high == low:
        return np.zeros(size[::-1], dtype=np.uint8)
    normalized = ((d0 - low) / (high - low)).squeeze().float().cpu().numpy() * 255
    saliency = Image.fromarray(normalized).convert("L").resize(size, resample=Image.Resampling.BICUBIC)
    return np.asarray(saliency, dtype=np.uint8)


class ForegroundSegmenter:
    """A loaded U^2-Net at one pin, with fixed settings."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        settings: ForegroundSettings = ForegroundSettings(),
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family != "u2net":
            raise InstrumentError(f"{instrument.id}: family {instrument.family!r} is not run by the U^2-Net adapter")
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.key not in SPECS:
            raise InstrumentError(f"{instrument.id}: no U^2-Net adapter for key {instrument.key!r} (adapters: {', '.join(SPECS)})")
        if not instrument.weight_id:
            raise InstrumentError(f"{instrument.id}: roster.toml declares no weight_id (the .pth file in the repo to load)")
        self.instrument, self.pin, self.settings, self.spec = instrument, pin, settings, SPECS[instrument.key]
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.weight_file = pinned_file(
            instrument, pin, str(instrument.weight_id), cache_dir=cache_dir, local_files_only=local_files_only
        )
        self._verify_checksum()
        self.model = u2net_architecture(self.spec.layers)
        try:
            state = torch.load(self.weight_file, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, EOFError, AttributeError, TypeError) as exc:
            raise InstrumentError(
                f"{self.weight_file}: not a U^2-Net state dict of carvekit's U2NETArchitecture "
                f"({self.spec.layers if isinstance(self.spec.layers, str) else 'layer dict'}) ({exc}); "
                f"pin {pin.key} of {instrument.id} holds another model"
            ) from exc
        self.model = self.model.eval().to(self.device, self.dtype)
        self.preprocess_tag = (
            f"dec={decoder_tag()};color={COLOR_POLICY};alpha={ALPHA_POLICY};"
            f"proc=carvekit-{CARVEKIT_VERSION}:u2net:resize=pil:bicubic:{self.spec.input_size}x{self.spec.input_size}:"
            f"scale=max:norm=imagenet;dtype={str(self.dtype).removeprefix('torch.')};"
            f"post=d0:minmax:pil-bicubic-to-plate;threshold={settings.threshold};adapter={ADAPTER_VERSION}"
        )

    def _verify_checksum(self) -> None:
        """Refuse a weight file whose sha512 is not the one carvekit verifies (when one is declared)."""
        if self.spec.sha512 is None:
            return
        digest = hashlib.sha512()
        with self.weight_file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != self.spec.sha512:
            raise InstrumentError(
                f"{self.weight_file}: sha512 {digest.hexdigest()[:16]}... is not carvekit {CARVEKIT_VERSION}'s checksum "
                f"of {self.instrument.weight_id} ({self.spec.sha512[:16]}...); pin {self.pin.key} of {self.instrument.id} "
                "holds another file: review it before changing the declared checksum"
            )

    @torch.inference_mode()
    def segment(self, images: list[Image.Image], opaque: list[np.ndarray | None]) -> list[Foreground]:
        """Foreground priors of RGB plates, one forward pass for the batch (eval mode: a plate's
        map does not depend on its batch)."""
        batch = torch.cat([preprocess(image, self.spec.input_size) for image in images])
        d0 = self.model(batch.to(self.device, self.dtype))[0].float()
        results = []
        for index, (image, alpha) in enumerate(zip(images, opaque)):
            if alpha is not None and alpha.shape != (image.height, image.width):
                raise InstrumentError(f"alpha mask is {alpha.shape[::-1]}, the plate {image.size}")
            saliency = postprocess(d0[index], image.size)
            thresholded = saliency >= self.settings.threshold
            mask = thresholded & alpha if alpha is not None else thresholded
            low, high = float(d0[index].min()), float(d0[index].max())
            excluded = int(thresholded.sum() - mask.sum())
            results.append(Foreground(saliency, mask, excluded, low, high))
        return results

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it."""
        layers = self.spec.layers
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "mask",
            "model_class": "carvekit.ml.arch.u2net.u2net.U2NETArchitecture",
            "layers": layers if isinstance(layers, str) else {k: [v[0], list(v[1]), v[2]] for k, v in layers.items()},
            "weight_file": self.instrument.weight_id,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": {
                "decoder": decoder_tag(), "color_policy": COLOR_POLICY, "color_policy_description": COLOR_POLICY_DESCRIPTION,
                "alpha_policy": ALPHA_POLICY, "alpha_policy_description": ALPHA_POLICY_DESCRIPTION,
                "input_size": self.spec.input_size, "resample": "bicubic", "scale": "divide by the image maximum",
                "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
            },  # fmt: skip
            "foreground": asdict(self.settings),
        }
