"""Segment Anything automatic mask generation through transformers at a pinned sha.

Plain Python: no Dagster here. A :class:`MaskGenerator` is built from a registry instrument
(family ``sam`` or ``sam-hq``) and its pin, loads the family's model and processor once
(:data:`ARCHITECTURES`: ``SamModel`` or ``SamHQModel`` from the hub at the pinned sha, or an
original segment-anything ``.pth`` converted to ``SamModel``), and runs the segment-anything
automatic mask generation algorithm on a plate: a point grid per crop layer,
prompts in bounded batches, predicted-IoU and stability filters, box NMS within and across
crops, optional small-region cleanup. The algorithm's steps are segment-anything's own pure
helpers (``segment_anything.utils.amg``) and torchvision's ``batched_nms``.

The model-free steps are in :mod:`awb_dagster.instruments.amg`; the masks become records
(schema and field meanings) in :func:`awb_dagster.provenance.rows.mask_rows`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

from awb_dagster.constants import SAM_FAMILIES
from awb_dagster.instruments.amg import (
    GeneratedMask,
    GeneratorSettings,
    join_mask_data,
    masks_at_plate,
    nms_across_crops,
    nms_within_crop,
    remove_small_regions,
)
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
    size_text,
    weights_error,
)
from awb_dagster.plates.imaging import COLOR_POLICY, COLOR_POLICY_DESCRIPTION, decoder_tag, working_size
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the generator or its pre/post-processing code changes what it computes.
ADAPTER_VERSION = "sam-amg-v2"

ALPHA_POLICY = "transparent-removed-v1"
ALPHA_POLICY_DESCRIPTION = (
    f"{ALPHA_POLICY}: the model sees the plate composited over white (color policy); pixels whose "
    "alpha is 0 are then removed from every mask at plate resolution, and a mask left empty is dropped"
)
WORKING_RESIZE = f"PIL-{PIL.__version__}:bilinear"
MASK_UPSCALE = "torch-nearest"  # working-resolution masks to plate resolution

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


def describe_sam_processor(processor: Any) -> dict[str, Any]:
    """Every SamImageProcessor setting that changes pixels, in a stable order."""
    config = processor.image_processor.to_dict()
    return {
        "processor": type(processor.image_processor).__name__,
        "do_resize": config.get("do_resize"),
        "size": config.get("size"),
        "resample": RESAMPLE_NAMES.get(config.get("resample"), str(config.get("resample"))),
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


class MaskGenerator:
    """A loaded SAM or SAM-HQ instrument at one pin, with fixed generator settings.

    ``cache_dir`` is the hub cache; ``weights_dir`` holds weight files of ``source = "url"``
    instruments (default: :func:`awb_dagster.registry.weight_files.weight_files_dir`), each verified against
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
        transformers = quiet_transformers()
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
            raise weights_error(model_id, self.pin, exc) from exc
        return processor, model.eval().to(self.device)

    def _load_original(self) -> tuple[Any, torch.nn.Module]:
        """An original segment-anything checkpoint: the weight file verified against the pin's
        sha256, read with ``weights_only=True`` and converted to ``SamModel``, with
        segment-anything's preprocessing as a ``SamProcessor``."""
        from awb_dagster.instruments.sam_convert import load_original_as_transformers, processor_for
        from awb_dagster.registry.hub_client import PinError
        from awb_dagster.registry.weight_files import fetch_weight_file

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
        data = join_mask_data(
            [
                self._process_crop(pixels, crop_box, grids[layer_idx], (work_h, work_w))
                for crop_box, layer_idx in zip(crop_boxes, layer_idxs)
            ]
        )
        if len(crop_boxes) > 1 and len(data["rles"]):
            nms_across_crops(data, settings.crop_nms_thresh)
        if settings.min_mask_region_area > 0 and len(data["rles"]):
            data = remove_small_regions(data, settings)
        return masks_at_plate(data, (width, height), (work_w, work_h), opaque)

    def _process_crop(
        self, pixels: np.ndarray, crop_box: list[int], grid: np.ndarray, work_hw: tuple[int, int]
    ) -> Any:
        from segment_anything.utils import amg

        x0, y0, x1, y1 = crop_box
        crop = pixels[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        # A PIL image: a tiny numpy crop (e.g. 3 px wide) has an ambiguous channel axis.
        inputs = self.processor(images=Image.fromarray(crop), return_tensors="pt")
        embeddings = self._image_features(inputs["pixel_values"].to(self.device, self.dtype))
        points = grid * np.array([[crop_w, crop_h]])  # (x, y) in crop pixels
        data = join_mask_data(
            [
                self._process_batch(batch, embeddings, inputs, crop_box, work_hw)
                for (batch,) in amg.batch_iterator(self.settings.points_per_batch, points)
            ]
        )
        if len(data["rles"]):
            nms_within_crop(data, self.settings.box_nms_thresh)
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

