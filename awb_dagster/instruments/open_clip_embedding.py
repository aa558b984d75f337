"""Image embeddings of open_clip checkpoints (roster ``library = "open_clip"``: CLIP-H, BiomedCLIP)
at a pinned sha, from the home's hub cache.

The hub layout open_clip's own ``hf-hub:`` loader reads (``open_clip.factory``): the repo's
``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and one weight file, preferring
``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.safetensors``) over
``open_clip_pytorch_model.bin`` as open_clip does. Both are
fetched with ``hf_hub_download`` at the pinned sha (cache only once the pin carries them).

Only the image tower is built, with open_clip's own builder (``open_clip.model._build_vision_tower``,
what ``CLIP`` / ``CustomTextCLIP`` construct ``.visual`` with) and loaded strictly from the
checkpoint's ``visual.*`` tensors; ``encode_image`` is exactly ``visual(image)``. The text tower is
never built: BiomedCLIP's is a Hugging Face BERT whose config open_clip fetches from another,
unpinned repo (``text_cfg.hf_model_name``), which would need the network. Weights load through
safetensors or ``torch.load(weights_only=True)``. Preprocessing is open_clip's
``image_transform_v2`` for the repo's ``preprocess_cfg`` (PIL resize, crop, normalize) on the CPU.
No Dagster here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from awb_dagster.instruments.common import (
    InstrumentError,
    hub_kwargs,
    pin_provenance,
    require_pin_of,
    resolve_device,
    resolve_dtype,
)
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "open-clip-embedding-v1"
OPEN_CLIP_LIBRARY = "open_clip"
CONFIG_FILE = "open_clip_config.json"
# open_clip's preference among the weight files an hf-hub repo may hold (factory._find_checkpoint_in_dir).
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
OUTPUT_FIELD = "visual(image)"  # open_clip's encode_image(image, normalize=False)


def _fetch(instrument: Instrument, pin: Pin, filename: str, hub: dict[str, Any]) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            instrument.id, filename, revision=pin.sha, cache_dir=hub["cache_dir"], local_files_only=hub["local_files_only"]
        )
    )


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def preprocess_tag(spec: dict[str, Any]) -> str:
    """Everything that changes pixels; two different pipelines never share one."""
    draft = f"jpeg-dct-min-side-{spec['draft_min_side']}" if spec["draft_min_side"] else "none"
    size = "x".join(str(side) for side in np.atleast_1d(spec["size"]))
    crop = {"shortest": f"center:{size}", "longest": f"center-pad:{size}:fill={spec['fill_color']}"}
    norm = "mean(" + ",".join(f"{x:g}" for x in spec["mean"]) + ")std(" + ",".join(f"{x:g}" for x in spec["std"]) + ")"
    return (
        f"dec={spec['decoder']};draft={draft};color={spec['color_policy']};proc={spec['processor']};"
        f"resize={spec['resize_library']}@cpu:{spec['interpolation']}:antialias:{spec['resize_mode']}:{size};"
        f"crop={crop.get(spec['resize_mode'], 'none')};rescale=0.00392157;norm={norm};adapter={ADAPTER_VERSION}"
    )


class OpenClipEmbedder:
    """A loaded open_clip image tower at one pin, with :class:`ImageEmbedder`'s plate interface."""

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
        if instrument.library != OPEN_CLIP_LIBRARY:
            raise InstrumentError(f"{instrument.id}: library {instrument.library!r} is not open_clip")
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # open_clip's transform runs on PIL images in the decode workers: the decoder is always PIL.
        self.decoder = "pil"
        self.preprocess_on_device = False
        self._hub = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        config, weights = self._files()
        self.model_cfg = config["model_cfg"]
        self.model, self.transform, spec = self._build(config, weights)
        spec["draft_min_side"] = 2 * int(max(np.atleast_1d(spec["size"]))) if jpeg_draft else None
        spec.update(decoder=decoder_tag(), color_policy=COLOR_POLICY, color_policy_description=COLOR_POLICY_DESCRIPTION)
        self.preprocess_spec = spec
        self.preprocess_tag = preprocess_tag(spec)
        self.weight_file = weights.name
        self.dim = self._probe_dim()

    def _files(self) -> tuple[dict[str, Any], Path]:
        model_id = self.instrument.id
        candidates = [name for name in WEIGHT_FILES if name in self.pin.files] or list(WEIGHT_FILES)
        try:
            config_path = _fetch(self.instrument, self.pin, CONFIG_FILE, self._hub)
        except OSError as exc:
            raise InstrumentError(
                f"{model_id}@{self.pin.sha}: no {CONFIG_FILE} at the pin ({exc}); an open_clip hub repo keeps "
                f"its model and preprocess config there. Re-pin it (`awb pin {model_id}`)."
            ) from exc
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "model_cfg" not in config:
            raise InstrumentError(f"{model_id}@{self.pin.sha[:10]}: {CONFIG_FILE} has no model_cfg")
        errors = []
        for name in candidates:
            try:
                return config, _fetch(self.instrument, self.pin, name, self._hub)
            except OSError as exc:
                errors.append(f"{name}: {exc}")
        raise InstrumentError(
            f"{model_id}@{self.pin.sha}: none of the open_clip weight files {', '.join(candidates)} loads from the "
            f"home's hub cache ({'; '.join(errors)}). `awb pin {model_id} --revision {self.pin.sha}` fetches "
            "them again (it needs the hub)."
        )

    def _build(self, config: dict[str, Any], weights: Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        import open_clip
        from open_clip.model import _build_vision_tower
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        model_cfg = config["model_cfg"]
        vision_cfg = dict(model_cfg["vision_cfg"])
        if vision_cfg.get("timm_model_name"):
            vision_cfg["timm_model_pretrained"] = False  # the checkpoint holds the weights: never download timm's
        visual = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, model_cfg.get("quick_gelu", False))
        state = _load_weights(weights)
        tower = {key.removeprefix("visual."): value for key, value in state.items() if key.startswith("visual.")}
        if not tower:
            raise InstrumentError(f"{self.instrument.id}@{self.pin.sha[:10]}: {weights.name} has no visual.* tensors")
        try:
            visual.load_state_dict(tower, strict=True)
        except RuntimeError as exc:
            raise InstrumentError(
                f"{self.instrument.id}@{self.pin.sha[:10]}: {weights.name} does not fit the image tower of "
                f"{CONFIG_FILE}: {exc}"
            ) from exc
        # As open_clip's create_model: the repo's preprocess_cfg over the defaults, the size the tower's.
        merged = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
        if hasattr(visual, "image_size"):
            merged["size"] = visual.image_size
        preprocess = PreprocessCfg(**merged)
        spec = {
            "processor": f"open_clip-{open_clip.__version__}:image_transform_v2",
            "resize_library": f"PIL-{PIL.__version__}",
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(preprocess).items()},
            "weight_file": weights.name,
        }
        spec["mean"] = [round(float(x), 6) for x in spec["mean"]]
        spec["std"] = [round(float(x), 6) for x in spec["std"]]
        return visual.eval().to(self.device, self.dtype), image_transform_v2(preprocess, is_train=False), spec

    def _probe_dim(self) -> int:
        side = int(max(np.atleast_1d(self.preprocess_spec["size"])))
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
        return self.preprocess_tag

    def load_plate(
        self, path: Path, sha256: str, *, max_pixels: int, plate_format: str | None = None, plate_mode: str | None = None
    ) -> torch.Tensor:
        """Plate file -> model input [3, H, W]. Thread-safe; runs in the decode workers."""
        image = load_rgb(
            path, max_pixels=max_pixels, expected_sha256=sha256, draft_min_side=self.preprocess_spec["draft_min_side"]
        )
        return self.prepare(image)

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        """RGB image -> model input [3, H, W], open_clip's eval transform. Thread-safe."""
        return self.transform(image)

    def pixel_values(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(prepared).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> np.ndarray:
        """[B, 3, H, W] -> raw image embeddings [B, dim] (``encode_image``, unnormalized), float32."""
        batch = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
        return self.model(batch).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "output_kind": "vector",
            "output_dim": self.dim,
            "output_dtype": "float32",
            "output_field": OUTPUT_FIELD,
            "model_class": f"open_clip:{type(self.model).__name__}",
            "library": OPEN_CLIP_LIBRARY,
            "weight_file": self.weight_file,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
            "decoder": self.decoder,
        }
