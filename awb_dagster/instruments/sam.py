"""Segment Anything automatic mask generation through transformers at a pinned sha.

Plain Python: no Dagster here. A :class:`MaskGenerator` is built from a registry instrument
(family ``sam`` or ``sam-hq``) and its pin, loads the family's model and processor once
(:data:`ARCHITECTURES`: ``SamModel`` or ``SamHQModel`` from the hub at the pinned sha, or an
original segment-anything ``.pth`` converted to ``SamModel``), and runs the segment-anything
automatic mask generation algorithm on a plate: a point grid per crop layer,
prompts in bounded batches, predicted-IoU and stability filters, box NMS within and across
crops, optional small-region cleanup. The algorithm's steps are segment-anything's own pure
helpers (``segment_anything.utils.amg``) and torchvision's ``batched_nms``; COCO RLE is
pycocotools'.

Record schema (one per mask, see :func:`awb_dagster.provenance.records.mask_schema`):

- ``rle_counts`` / ``rle_size``: COCO RLE (pycocotools, compressed counts as ASCII) at the
  plate's resolution ``[height, width]``.
- ``mask_sha256``: sha256 of the decoded mask as C-order ``uint8`` 0/1 bytes, shape
  ``(height, width)`` (what ``pycocotools.mask.decode`` returns, made contiguous).
- ``bbox``: XYWH in plate pixels, ``area``: pixel count, ``centroid``: mean (x, y) pixel index.
- ``area_fraction`` = area / plate pixels, ``bbox_area_fraction`` = bbox area / plate pixels,
  ``bbox_fill`` = area / bbox area.
- ``predicted_iou``, ``stability_score``: SAM's quality fields at the working resolution.
- ``point_coords``: the prompt point (x, y) in plate pixels; ``crop_box``: XYWH in plate pixels.
- ``fragmentation``: 8-connected components of the mask at plate resolution.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, ImageOps

from awb_dagster.constants import SAM_FAMILIES
from awb_dagster.instruments.embedding import InstrumentError, norm_text, resolve_device, resolve_dtype, size_text
from awb_dagster.plates.imaging import (
    COLOR_POLICY,
    COLOR_POLICY_DESCRIPTION,
    decoder_tag,
    load_rgb,
    open_checked,
)
from awb_dagster.instruments import hub_kwargs, pin_provenance, require_pin_of
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.model import Instrument

# Bump when the generator or its pre/post-processing code changes what it computes.
ADAPTER_VERSION = "sam-amg-v2"

ALPHA_POLICY = "transparent-removed-v1"
ALPHA_POLICY_DESCRIPTION = (
    f"{ALPHA_POLICY}: the model sees the plate composited over white (color policy); pixels whose "
    "alpha is 0 are then removed from every mask at plate resolution, and a mask left empty is dropped"
)
WORKING_RESIZE = f"PIL-{PIL.__version__}:bilinear"
MASK_UPSCALE = "torch-nearest"  # working-resolution masks to plate resolution

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class SamArchitecture:
    """The transformers classes that run one family, and what one point prompt yields."""

    model_class: str
    processor_class: str
    prompt_output: str  # recorded in the preprocess tag: it decides which masks come out


ARCHITECTURES: dict[str, SamArchitecture] = {
    # Three masks per prompt (segment-anything's multimask output), each filtered on its own.
    "sam": SamArchitecture("SamModel", "SamProcessor", "multimask-3"),
    # SAM-HQ's own automatic mask generator: multimask output, the SAM mask of highest predicted
    # IoU plus the HQ-token mask (hq_token_only=False), so one mask per prompt.
    "sam-hq": SamArchitecture("SamHQModel", "SamHQProcessor", "best-of-multimask+hq-token"),
}

# Where the weights come from, by registry source (hub repos are safetensors at the pinned sha).
WEIGHTS_FORMATS = {"hf": "hub-safetensors", "demo": "hub-safetensors", "url": "original-pth-converted"}


@dataclass(frozen=True)
class GeneratorSettings:
    """Every automatic mask generation parameter; the defaults are segment-anything's, except the
    memory bounds (``points_per_batch``, ``max_working_side``), which it does not have."""

    points_per_side: int = 32  # grid of points_per_side² prompts on the first crop layer
    points_per_batch: int = 64  # prompts per decoder pass: bounds memory, does not change results
    pred_iou_thresh: float = 0.88  # keep masks whose predicted IoU exceeds this (0 disables)
    stability_score_thresh: float = 0.95  # keep masks whose stability score exceeds this (0 disables)
    stability_score_offset: float = 1.0  # logit offset of the stability score
    mask_threshold: float = 0.0  # logit threshold that binarizes masks
    box_nms_thresh: float = 0.7  # box IoU above which the lower-scoring mask of a crop is dropped
    crop_n_layers: int = 0  # extra crop layers (layer i has (2**i)² crops)
    crop_nms_thresh: float = 0.7  # box IoU for NMS across crops (smaller crops win)
    crop_overlap_ratio: float = 512 / 1500  # overlap of crops, as a fraction of the image side
    crop_n_points_downscale_factor: int = 1  # points per side shrink by this per crop layer
    min_mask_region_area: int = 0  # islands and holes below this area are removed (0 disables)
    max_working_side: int = 1024  # plates larger than this are resized to it before generation

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor", "max_working_side"):
            if getattr(self, name) < 1:
                raise InstrumentError(f"generator setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("crop_n_layers", "min_mask_region_area"):
            if getattr(self, name) < 0:
                raise InstrumentError(f"generator setting {name} must be >= 0, got {getattr(self, name)}")

    def tag(self) -> str:
        """The settings that change which masks come out (``points_per_batch`` does not)."""
        fields = asdict(self)
        fields.pop("points_per_batch")
        return ",".join(f"{name}={value:g}" for name, value in fields.items())


@dataclass(frozen=True)
class GeneratedMask:
    """One mask at plate resolution, before it becomes a record."""

    mask: np.ndarray  # bool [height, width]
    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]  # plate pixels (x, y)
    crop_box: tuple[int, int, int, int]  # plate pixels XYWH


def describe_sam_processor(processor: Any) -> dict[str, Any]:
    """Every SamImageProcessor setting that changes pixels, in a stable order."""
    config = processor.image_processor.to_dict()
    return {
        "processor": type(processor.image_processor).__name__,
        "do_resize": config.get("do_resize"),
        "size": config.get("size"),
        "resample": _RESAMPLE_NAMES.get(config.get("resample"), str(config.get("resample"))),
        "do_pad": config.get("do_pad"),
        "pad_size": config.get("pad_size"),
        "do_rescale": config.get("do_rescale"),
        "rescale_factor": config.get("rescale_factor"),
        "do_normalize": config.get("do_normalize"),
        "image_mean": [round(float(x), 6) for x in config.get("image_mean") or []],
        "image_std": [round(float(x), 6) for x in config.get("image_std") or []],
    }


def preprocess_tag(spec: dict[str, Any], settings: GeneratorSettings) -> str:
    """Everything that changes pixels or which masks come out; two pipelines never share a tag."""

    sizes, norm = size_text, norm_text(spec)
    return (
        f"dec={spec['decoder']};color={spec['color_policy']};alpha={spec['alpha_policy']};"
        f"work={spec['working_resize']}:max-side={settings.max_working_side};"
        f"proc={spec['processor']}:{spec['resample']}:{sizes(spec['size'])}:pad={sizes(spec['pad_size'])};"
        f"norm={norm};model={spec['model_class']}:{spec['weights_format']}:out={spec['prompt_output']};"
        f"amg={settings.tag()};upscale={spec['mask_upscale']};adapter={ADAPTER_VERSION}"
    )


def load_plate(path: Path, sha256: str, *, max_pixels: int) -> tuple[Image.Image, np.ndarray | None]:
    """The plate as RGB under the color policy, and where it is opaque (None: no alpha)."""
    rgb = load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256)
    with open_checked(path, io.BytesIO(Path(path).read_bytes()), max_pixels=max_pixels) as image:
        if not image.has_transparency_data:
            return rgb, None
        alpha = np.asarray(ImageOps.exif_transpose(image).convert("RGBA"))[..., 3]
    return rgb, alpha > 0


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longest side at most ``max_side``, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a 2-D boolean mask (union-find over row runs)."""
    mask = np.asarray(mask, dtype=bool)
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts, ends = np.argwhere(edges == 1), np.argwhere(edges == -1)  # both in row-major order
    if len(starts) == 0:
        return 0
    rows, begin, end = starts[:, 0], starts[:, 1], ends[:, 1]  # run = [begin, end) in row
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for row in range(1, mask.shape[0]):
        above = range(row_start[row - 1], row_start[row])
        here = range(row_start[row], row_start[row + 1])
        j = above.start
        for i in here:
            # 8-connectivity: runs touch when they overlap after widening by one pixel.
            while j < above.stop and end[j] < begin[i]:
                j += 1
            k = j
            while k < above.stop and begin[k] <= end[i]:
                a, b = find(i), find(k)
                if a != b:
                    parent[a] = b
                k += 1
    return len({find(i) for i in range(len(rows))})


def _join_mask_data(parts: list[Any]) -> Any:
    """Concatenate fresh ``MaskData`` parts with the same keys, sharing their RLE lists.

    segment-anything's ``MaskData.cat`` deep-copies every RLE it receives; on CPU that copy costs
    about as much as the mask decoder for detailed masks (profiled in bench/amg_compare.py)."""
    from segment_anything.utils import amg

    return amg.MaskData(
        **{
            key: torch.cat([part[key] for part in parts])
            if isinstance(value, torch.Tensor)
            else [item for part in parts for item in part[key]]
            for key, value in parts[0].items()
        }
    )


class MaskGenerator:
    """A loaded SAM or SAM-HQ instrument at one pin, with fixed generator settings.

    ``cache_dir`` is the hub cache; ``weights_dir`` holds weight files of ``source = "url"``
    instruments (default: :func:`awb_dagster.registry.pins.weight_files_dir`), each verified against
    the pin's sha256 before it is read.
    """

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        settings: GeneratorSettings,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        weights_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family not in SAM_FAMILIES:
            raise InstrumentError(
                f"{instrument.id}: family {instrument.family!r} is not run by the SAM adapter "
                f"(it runs {', '.join(ARCHITECTURES)})"
            )
        if instrument.source not in WEIGHTS_FORMATS or (instrument.source == "url" and instrument.family != "sam"):
            raise InstrumentError(
                f"{instrument.id}: the SAM adapter loads {instrument.family} weights from the hub only; "
                f"source {instrument.source!r} has no loader (original .pth files convert to SamModel only)"
            )
        require_pin_of(instrument, pin, InstrumentError)
        if settings.min_mask_region_area > 0 and importlib.util.find_spec("cv2") is None:
            raise InstrumentError(
                "min_mask_region_area > 0 uses segment-anything's remove_small_regions, which needs "
                "OpenCV: install opencv-python-headless, or set min_mask_region_area = 0"
            )
        self.instrument = instrument
        self.pin = pin
        self.settings = settings
        self.architecture = ARCHITECTURES[instrument.family]
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._hub_kwargs = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        self._weights_dir = weights_dir
        self.processor, self.model = self._load_original() if instrument.source == "url" else self._load()
        spec = describe_sam_processor(self.processor)
        spec.update(
            model_class=type(self.model).__name__,
            weights_format=WEIGHTS_FORMATS[instrument.source],
            prompt_output=self.architecture.prompt_output,
            decoder=decoder_tag(),
            color_policy=COLOR_POLICY,
            color_policy_description=COLOR_POLICY_DESCRIPTION,
            alpha_policy=ALPHA_POLICY,
            alpha_policy_description=ALPHA_POLICY_DESCRIPTION,
            working_resize=WORKING_RESIZE,
            mask_upscale=MASK_UPSCALE,
        )
        self.preprocess_spec = spec
        self.preprocess_tag = preprocess_tag(spec, settings)

    def _load(self) -> tuple[Any, torch.nn.Module]:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        model_id = self.instrument.id
        model_class = getattr(transformers, self.architecture.model_class)
        processor_class = getattr(transformers, self.architecture.processor_class)
        try:
            config = transformers.AutoConfig.from_pretrained(model_id, **self._hub_kwargs)
            # from_pretrained of another architecture's repo would leave weights randomly initialized.
            if not isinstance(config, model_class.config_class):
                raise InstrumentError(
                    f"{model_id}@{self.pin.sha}: config.json is a {type(config).__name__} ({config.model_type!r}), "
                    f"but family {self.instrument.family!r} runs {model_class.__name__}; fix the family in roster.toml"
                )
            processor = processor_class.from_pretrained(model_id, **self._hub_kwargs)
            model = model_class.from_pretrained(
                model_id, config=config, use_safetensors=True, dtype=self.dtype, **self._hub_kwargs
            )
        except OSError as exc:
            raise InstrumentError(
                f"{model_id}@{self.pin.sha}: cannot load weights ({exc}). Weights load only at the "
                "locked sha through safetensors; check the hub endpoint/token, or the local cache "
                "when offline (HF_HUB_OFFLINE=1)."
            ) from exc
        return processor, model.eval().to(self.device)

    def _load_original(self) -> tuple[Any, torch.nn.Module]:
        """An original segment-anything checkpoint: the weight file verified against the pin's
        sha256, read with ``weights_only=True`` and converted to ``SamModel``, with
        segment-anything's preprocessing as a ``SamProcessor``."""
        from awb_dagster.instruments.sam_convert import load_original_as_transformers, processor_for
        from awb_dagster.registry.pins import PinError, fetch_weight_file

        try:
            path = fetch_weight_file(
                self.instrument,
                self.pin.sha,
                weights_dir=self._weights_dir,
                offline=bool(self._hub_kwargs["local_files_only"]),
            )
        except PinError as exc:
            raise InstrumentError(str(exc)) from exc
        model = load_original_as_transformers(path)
        return processor_for(model.config), model.to(self.device, self.dtype).eval()

    @torch.inference_mode()
    def generate(self, image: Image.Image, opaque: np.ndarray | None = None) -> list[GeneratedMask]:
        """Masks of an RGB plate at its own resolution, best predicted IoU first.

        ``opaque`` (bool [height, width]) removes transparent pixels by the alpha policy. No mask
        passing the filters is a valid result: an empty list.
        """
        from segment_anything.utils import amg
        from torchvision.ops import batched_nms, box_area

        settings = self.settings
        width, height = image.size
        work_w, work_h = working_size(width, height, settings.max_working_side)
        work = image if (work_w, work_h) == (width, height) else image.resize((work_w, work_h), Image.Resampling.BILINEAR)
        pixels = np.asarray(work)
        crop_boxes, layer_idxs = amg.generate_crop_boxes(
            (work_h, work_w), settings.crop_n_layers, settings.crop_overlap_ratio
        )
        grids = amg.build_all_layer_point_grids(
            settings.points_per_side, settings.crop_n_layers, settings.crop_n_points_downscale_factor
        )
        data = _join_mask_data(
            [
                self._process_crop(pixels, crop_box, grids[layer_idx], (work_h, work_w))
                for crop_box, layer_idx in zip(crop_boxes, layer_idxs)
            ]
        )
        if len(crop_boxes) > 1 and len(data["rles"]):
            # Across crops prefer masks from smaller crops, as segment-anything does.
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(
                data["boxes"].float(), scores.to(data["boxes"].device),
                torch.zeros_like(data["boxes"][:, 0]), iou_threshold=settings.crop_nms_thresh,
            )  # fmt: skip
            data.filter(keep)
        if settings.min_mask_region_area > 0 and len(data["rles"]):
            data = self._remove_small_regions(data)
        return self._to_plate(data, (width, height), (work_w, work_h), opaque)

    def _process_crop(
        self, pixels: np.ndarray, crop_box: list[int], grid: np.ndarray, work_hw: tuple[int, int]
    ) -> Any:
        from segment_anything.utils import amg
        from torchvision.ops import batched_nms

        x0, y0, x1, y1 = crop_box
        crop = pixels[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        # A PIL image: a tiny numpy crop (e.g. 3 px wide) has an ambiguous channel axis.
        inputs = self.processor(images=Image.fromarray(crop), return_tensors="pt")
        embeddings = self._image_features(inputs["pixel_values"].to(self.device, self.dtype))
        points = grid * np.array([[crop_w, crop_h]])  # (x, y) in crop pixels
        data = _join_mask_data(
            [
                self._process_batch(batch, embeddings, inputs, crop_box, work_hw)
                for (batch,) in amg.batch_iterator(self.settings.points_per_batch, points)
            ]
        )
        if len(data["rles"]):
            keep = batched_nms(
                data["boxes"].float(), data["iou_preds"],
                torch.zeros_like(data["boxes"][:, 0]), iou_threshold=self.settings.box_nms_thresh,
            )  # fmt: skip
            data.filter(keep)
        data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = amg.uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.float32).reshape(-1, 4)
        return data

    def _image_features(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        """The image encoder's outputs as the mask decoder takes them (keyword arguments)."""
        if self.architecture.model_class == "SamHQModel":
            # SAM-HQ's decoder also fuses the early ViT features of the global-attention blocks.
            embeddings, intermediate = self.model.get_image_embeddings(pixel_values)
            return {"image_embeddings": embeddings, "intermediate_embeddings": intermediate}
        return {"image_embeddings": self.model.get_image_embeddings(pixel_values)}

    def _process_batch(
        self, points: np.ndarray, embeddings: dict[str, Any], inputs: Any, crop_box: list[int], work_hw: tuple[int, int]
    ) -> Any:
        from segment_anything.utils import amg

        settings = self.settings
        crop_h, crop_w = (int(v) for v in inputs["original_sizes"][0])
        resized_h, resized_w = (int(v) for v in inputs["reshaped_input_sizes"][0])
        # Prompts live in the frame the processor resized the crop to (longest side = model input).
        scaled = points * np.array([[resized_w / crop_w, resized_h / crop_h]])
        input_points = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)[None, :, None, :]
        input_labels = torch.ones(input_points.shape[:3], dtype=torch.long, device=self.device)
        if self.architecture.model_class == "SamHQModel":
            output = self.model(
                **embeddings, input_points=input_points, input_labels=input_labels, multimask_output=True,
                hq_token_only=False,
            )  # fmt: skip
            # Masks come sorted by predicted IoU: the first is SAM-HQ's best-of-multimask + HQ mask.
            pred_masks, iou_scores = output.pred_masks[:, :, :1], output.iou_scores[:, :, :1]
        else:
            output = self.model(
                **embeddings, input_points=input_points, input_labels=input_labels, multimask_output=True
            )
            pred_masks, iou_scores = output.pred_masks, output.iou_scores
        logits = self.processor.post_process_masks(
            pred_masks.float(), inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
        )[0]  # [points, masks per prompt, crop_h, crop_w]
        iou = iou_scores[0].float()  # [points, masks per prompt]
        data = amg.MaskData(
            masks=logits.flatten(0, 1),
            iou_preds=iou.flatten(0, 1),
            points=torch.as_tensor(points.repeat(logits.shape[1], axis=0)),
        )
        del logits
        if settings.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > settings.pred_iou_thresh)
        data["stability_score"] = amg.calculate_stability_score(
            data["masks"], settings.mask_threshold, settings.stability_score_offset
        )
        if settings.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= settings.stability_score_thresh)
        data["masks"] = data["masks"] > settings.mask_threshold
        data["boxes"] = amg.batched_mask_to_box(data["masks"])
        work_h, work_w = work_hw
        data.filter(~amg.is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, work_w, work_h]))
        data["masks"] = amg.uncrop_masks(data["masks"], crop_box, work_h, work_w)
        data["rles"] = amg.mask_to_rle_pytorch(data["masks"])  # compact until the end
        del data["masks"]
        return data

    def _remove_small_regions(self, data: Any) -> Any:
        """segment-anything's own postprocess_small_regions (fill small holes, drop small islands,
        re-NMS preferring untouched masks), at the NMS threshold its generator uses."""
        from segment_anything import SamAutomaticMaskGenerator

        settings = self.settings
        return SamAutomaticMaskGenerator.postprocess_small_regions(
            data, settings.min_mask_region_area, max(settings.box_nms_thresh, settings.crop_nms_thresh)
        )

    def _to_plate(
        self, data: Any, plate_wh: tuple[int, int], work_wh: tuple[int, int], opaque: np.ndarray | None
    ) -> list[GeneratedMask]:
        from segment_anything.utils import amg

        width, height = plate_wh
        scale_x, scale_y = width / work_wh[0], height / work_wh[1]
        if opaque is not None and opaque.shape != (height, width):
            raise InstrumentError(f"alpha mask is {opaque.shape[::-1]}, the plate {plate_wh}")
        masks: list[GeneratedMask] = []
        order = np.argsort(-data["iou_preds"].float().cpu().numpy(), kind="stable") if len(data["rles"]) else []
        for i in order:
            mask = torch.from_numpy(amg.rle_to_mask(data["rles"][i]))
            if work_wh != plate_wh:
                mask = torch.nn.functional.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0
            plate_mask = mask.numpy().astype(bool)
            if opaque is not None:
                plate_mask &= opaque
            if not plate_mask.any():
                continue
            x0, y0, x1, y1 = data["crop_boxes"][i].tolist()
            px, py = data["points"][i].tolist()
            masks.append(
                GeneratedMask(
                    mask=plate_mask,
                    predicted_iou=float(data["iou_preds"][i]),
                    stability_score=float(data["stability_score"][i]),
                    point_coords=(float(px) * scale_x, float(py) * scale_y),
                    crop_box=(
                        round(x0 * scale_x), round(y0 * scale_y),
                        round((x1 - x0) * scale_x), round((y1 - y0) * scale_y),
                    ),
                )  # fmt: skip
            )
        return masks

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it, generator settings included."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "output_kind": "masks",
            "output_dtype": "bool",
            "model_class": type(self.model).__name__,
            "processor_class": type(self.processor).__name__,
            "weights_format": self.preprocess_spec["weights_format"],
            "prompt_output": self.architecture.prompt_output,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess_tag": self.preprocess_tag,
            "preprocess": self.preprocess_spec,
            "generator": asdict(self.settings),
        }


def mask_sha256(mask: np.ndarray) -> str:
    """sha256 of a decoded mask as C-order uint8 0/1 bytes (see the module docstring)."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def mask_rows(
    masks: list[GeneratedMask],
    *,
    plate_id: str,
    plate_sha256: str,
    model_id: str,
    model_sha: str,
    pin_key: str,
    preprocess_tag: str,
    run_id: str,
) -> list[dict[str, Any]]:
    """Records of ``masks`` (schema: :func:`awb_dagster.provenance.records.mask_schema`).

    Identical masks (possible only when NMS is disabled) would share a record id; the first,
    best-scoring one is kept.
    """
    from pycocotools import mask as mask_utils

    from awb_dagster.provenance.records import record_fields

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for generated in masks:
        mask = generated.mask
        height, width = mask.shape
        digest = mask_sha256(mask)
        if digest in seen:
            continue
        seen.add(digest)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        area = int(mask_utils.area(rle))
        ys, xs = np.nonzero(mask)
        plate_area = width * height
        rows.append(
            {
                **record_fields(
                    plate_id=plate_id, plate_sha256=plate_sha256, model_id=model_id, model_sha=model_sha,
                    pin_key=pin_key, preprocess_tag=preprocess_tag, run_id=run_id,
                    scope="segment", region=f"mask-sha256:{digest}",
                ),  # fmt: skip
                "mask_index": len(rows),
                "rle_counts": rle["counts"].decode("ascii"),
                "rle_size": [int(height), int(width)],
                "mask_sha256": digest,
                "bbox": [x, y, w, h],
                "area": area,
                "centroid": [float(xs.mean()), float(ys.mean())],
                "area_fraction": area / plate_area,
                "bbox_area_fraction": (w * h) / plate_area,
                "bbox_fill": area / (w * h),
                "predicted_iou": generated.predicted_iou,
                "stability_score": generated.stability_score,
                "point_coords": list(generated.point_coords),
                "crop_box": list(generated.crop_box),
                "fragmentation": count_components(mask),
            }
        )
    return rows
