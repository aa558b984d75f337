"""Image embedding instruments (CLIP, SigLIP, DINOv2, AIMv2) through transformers at a pinned sha.

Plain Python: no Dagster here. An :class:`ImageEmbedder` is built from a registry
instrument and its pin, loads weights once, and turns RGB images into float32 vectors
whose dim is asserted against the registry and the pin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.instruments.decoding import (
    DECODERS,
    EncodedJpeg,
    decode_jpeg_to_pil,
    decode_jpegs,
    read_jpeg,
    torch_decodable,
    torch_decoder_tag,
)
from awb_dagster.instruments.common import (
    RESAMPLE_NAMES,
    InstrumentError,
    hub_kwargs,
    norm_text,
    pin_provenance,
    require_pin_of,
    resolve_device,
    resolve_dtype,
    size_text,
)
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the adapter or its preprocessing code changes what it computes.
ADAPTER_VERSION = "embedding-v1"


@dataclass(frozen=True)
class FamilySpec:
    """How one model family is loaded and which output is its image embedding."""

    model_class: str
    output_field: str
    # CLIP checkpoints carry the projection dim at the top level of a CLIPConfig;
    # the vision tower must be built with it or its projection is re-initialized.
    vision_config_from_parent: bool = False
    # The vector is the mean of output_field's tokens [B, N, C] -> [B, C] (a model without CLS or head).
    token_mean: bool = False

    @property
    def output(self) -> str:
        """The output the vector is, as the manifest records it."""
        return f"{self.output_field}.mean(tokens)" if self.token_mean else self.output_field


FAMILIES: dict[str, FamilySpec] = {
    "clip": FamilySpec("CLIPVisionModelWithProjection", "image_embeds", vision_config_from_parent=True),
    "siglip": FamilySpec("SiglipVisionModel", "pooler_output"),
    "dinov2": FamilySpec("Dinov2Model", "pooler_output"),
    # AIMv2 has no CLS token; the distilled vision-only checkpoints have no pooling head either.
    "aimv2": FamilySpec("Aimv2VisionModel", "last_hidden_state", token_mean=True),
}

def describe_processor(processor: Any) -> dict[str, Any]:
    """Every processor setting that changes pixels, in a stable order."""
    config = processor.to_dict()
    resample = config.get("resample")
    resize_library = (
        f"PIL-{PIL.__version__}"
        if type(processor).__name__.endswith("Pil")
        else f"torchvision-{importlib.import_module('torchvision').__version__}"
    )
    return {
        "processor": type(processor).__name__,
        "do_resize": config.get("do_resize"),
        "resize_library": resize_library,
        "resample": RESAMPLE_NAMES.get(resample, str(resample)),
        "antialias": True,
        "size": config.get("size"),
        "do_center_crop": config.get("do_center_crop"),
        "crop_size": config.get("crop_size") if config.get("do_center_crop") else None,
        "do_rescale": config.get("do_rescale"),
        "rescale_factor": config.get("rescale_factor"),
        "do_normalize": config.get("do_normalize"),
        "image_mean": [round(float(x), 6) for x in config.get("image_mean") or []],
        "image_std": [round(float(x), 6) for x in config.get("image_std") or []],
    }


def _input_side(spec: dict[str, Any]) -> int:
    """The longest side the processor resizes or crops to."""
    sizes = [s for s in (spec.get("size"), spec.get("crop_size")) if s]
    return max(v for size in sizes for k, v in size.items() if k in ("height", "width", "shortest_edge"))


def preprocess_tag(spec: dict[str, Any]) -> str:
    """A tag naming everything that changes pixels; two different pipelines never share one."""
    crop = f"center:{size_text(spec['crop_size'])}" if spec["do_center_crop"] else "none"
    norm = norm_text(spec)
    rescale = f"{spec['rescale_factor']:.8g}" if spec["do_rescale"] else "none"
    draft = f"jpeg-dct-min-side-{spec['draft_min_side']}" if spec["draft_min_side"] else "none"
    return (
        f"dec={spec['decoder']};draft={draft};color={spec['color_policy']};proc={spec['processor']};"
        f"resize={spec['resize_library']}@{spec['processor_device']}:{spec['resample']}:antialias:"
        f"{size_text(spec['size'])};"
        f"crop={crop};rescale={rescale};norm={norm};adapter={ADAPTER_VERSION}"
    )


class ImageEmbedder:
    """A loaded embedding instrument at one pin."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
        jpeg_draft: bool = True,
        preprocess_on_device: bool | None = None,
        decoder: str = "pil",
    ):
        if decoder not in DECODERS:
            raise InstrumentError(
                f"{instrument.id}: decoder must be one of {', '.join(DECODERS)}, got {decoder!r}"
            )
        if instrument.family not in FAMILIES:
            raise InstrumentError(
                f"{instrument.id}: family {instrument.family!r} has no embedding adapter "
                f"(adapters: {', '.join(sorted(FAMILIES))})"
            )
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.family = FAMILIES[instrument.family]
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._hub_kwargs = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        self.processor, self.model = self._load()
        spec = describe_processor(self.processor)
        # JPEGs may decode at a DCT reduction that keeps both sides >= twice the model's
        # input side; the antialiased resize then sees ample pixels, at a fraction of the
        # decode cost of a full-size scan. The rule is part of the tag.
        spec["draft_min_side"] = 2 * _input_side(spec) if jpeg_draft else None
        # On a GPU the processor runs batched on the device (decode workers only decode);
        # on the CPU it runs per plate in the decode workers, overlapped with the model.
        self.preprocess_on_device = (
            self.device.type == "cuda" if preprocess_on_device is None else preprocess_on_device
        )
        spec["processor_device"] = str(self.device) if self.preprocess_on_device else "cpu"
        spec.update(decoder=decoder_tag(), color_policy=COLOR_POLICY)
        spec["color_policy_description"] = COLOR_POLICY_DESCRIPTION
        self.preprocess_spec = spec
        # The PIL path's tag: prepare(image), and every plate the declared decoder leaves to PIL.
        self.preprocess_tag = preprocess_tag(spec)
        # decoder="torchvision": JPEGs (RGB or L) decode with decode_jpeg where the processor runs
        # (nvjpeg, batched, on CUDA; libjpeg in the decode workers on the CPU), always at full size.
        self.decoder = decoder
        on_gpu = self.preprocess_on_device and self.device.type == "cuda"
        self._decode_device = self.device if on_gpu else torch.device("cpu")
        self.torch_spec = {**spec, "decoder": torch_decoder_tag(self._decode_device), "draft_min_side": None}
        self._torch_tag = preprocess_tag(self.torch_spec)
        self.dim = self._probe_dim()

    def _load(self) -> tuple[Any, torch.nn.Module]:
        import transformers

        # Load reports of unused text towers and per-tensor progress bars are noise here.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        model_class = getattr(transformers, self.family.model_class)
        model_id = self.instrument.id
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(model_id, **self._hub_kwargs)
            extra: dict[str, Any] = {}
            if self.family.vision_config_from_parent:
                parent = transformers.AutoConfig.from_pretrained(model_id, **self._hub_kwargs)
                vision_config = parent.vision_config
                vision_config.projection_dim = parent.projection_dim
                extra["config"] = vision_config
            model = model_class.from_pretrained(
                model_id, use_safetensors=True, dtype=self.dtype, **self._hub_kwargs, **extra
            )
        except OSError as exc:
            raise InstrumentError(
                f"{model_id}@{self.pin.sha}: cannot load weights ({exc}). Weights load only at the "
                "locked sha through safetensors; check the hub endpoint/token, or the local cache "
                "when offline (HF_HUB_OFFLINE=1)."
            ) from exc
        return processor, model.eval().to(self.device)

    def _probe_dim(self) -> int:
        side = _input_side(self.preprocess_spec)
        probe = PIL.Image.new("RGB", (side, side), (127, 127, 127))
        dim = self.embed(self.pixel_values([self.prepare(probe)])).shape[1]
        for source, declared in (("registry", self.instrument.expected_dim), ("pin", self.pin.output_dim)):
            if declared is not None and declared != dim:
                raise InstrumentError(
                    f"{self.instrument.id}@{self.pin.sha[:10]}: the model outputs {dim}-d vectors "
                    f"but the {source} declares {declared}; re-pin (`awb pin {self.instrument.id}`) "
                    "or fix the registry entry"
                )
        return dim

    def tag_for(self, plate_format: str, plate_mode: str) -> str:
        """The preprocess tag of a plate with these catalog facts: the tag of the pipeline that
        will make its pixels (with decoder "pil", always :attr:`preprocess_tag`)."""
        if self.decoder == "torchvision" and torch_decodable(plate_format, plate_mode):
            return self._torch_tag
        return self.preprocess_tag

    def load_plate(
        self,
        path: Path,
        sha256: str,
        *,
        max_pixels: int,
        plate_format: str | None = None,
        plate_mode: str | None = None,
    ) -> torch.Tensor | EncodedJpeg:
        """Plate file -> an item for :meth:`pixel_values`, by the pipeline :meth:`tag_for` names
        for the plate's catalog facts (without them: the PIL path, :attr:`preprocess_tag`).
        Thread-safe; runs in the decode workers. On the torchvision path with CUDA it only reads
        and verifies the bytes; the batch decodes on the device in :meth:`pixel_values`."""
        if self.decoder == "torchvision" and torch_decodable(plate_format, plate_mode):
            encoded = read_jpeg(path, sha256, max_pixels=max_pixels)
            if self._decode_device.type == "cuda":
                return encoded
            if self.preprocess_on_device:
                return decode_jpegs([encoded], self._decode_device)[0]
            return self.prepare(decode_jpeg_to_pil(encoded))
        image = load_rgb(
            path,
            max_pixels=max_pixels,
            expected_sha256=sha256,
            draft_min_side=self.preprocess_spec["draft_min_side"],
        )
        return self.prepare(image)

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        """RGB image -> the model input [3, H, W] (processor on the CPU), or the uint8
        pixels [3, H, W] when the processor runs on the device. Thread-safe."""
        if self.preprocess_on_device:
            return torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def pixel_values(self, prepared: list[torch.Tensor | EncodedJpeg]) -> torch.Tensor:
        """A batch of :meth:`prepare` or :meth:`load_plate` outputs, in any mix -> model input
        [B, 3, H, W] on the device. Encoded JPEGs decode here, in one batched call."""
        if not self.preprocess_on_device:
            return torch.stack(prepared).to(self.device, non_blocking=True)
        encoded = [item for item in prepared if isinstance(item, EncodedJpeg)]
        decoded = iter(decode_jpegs(encoded, self._decode_device))
        on_device = [
            next(decoded) if isinstance(item, EncodedJpeg) else item.to(self.device, non_blocking=True)
            for item in prepared
        ]
        return self.processor(images=on_device, return_tensors="pt", device=self.device)["pixel_values"]

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> np.ndarray:
        """[B, 3, H, W] -> raw embeddings [B, dim] as float32 on the CPU."""
        batch = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
        output = getattr(self.model(pixel_values=batch), self.family.output_field)
        if self.family.token_mean:
            output = output.mean(dim=1)
        return output.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "output_kind": "vector",
            "output_dim": self.dim,
            "output_dtype": "float32",
            "output_field": self.family.output,
            "model_class": self.family.model_class,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
            "decoder": self.decoder,
            **(
                {"torchvision_preprocess_tag": self._torch_tag, "torchvision_preprocess": self.torch_spec}
                if self.decoder == "torchvision"
                else {}
            ),
        }
