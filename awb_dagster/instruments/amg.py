"""Automatic mask generation: its settings, its mask type, and the model-free steps around the
SAM decoder (joining per-batch mask data, NMS across crops, small-region cleanup, masks back at
plate resolution). No Dagster here.

The steps are segment-anything's own pure helpers (``segment_anything.utils.amg``) and
torchvision's ``batched_nms``; :class:`awb_dagster.instruments.sam.MaskGenerator` runs the model
between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from awb_dagster.instruments.common import InstrumentError


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
    """One mask at plate resolution, before it becomes a record
    (:func:`awb_dagster.provenance.rows.mask_rows`)."""

    mask: np.ndarray  # bool [height, width]
    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]  # plate pixels (x, y)
    crop_box: tuple[int, int, int, int]  # plate pixels XYWH


def join_mask_data(parts: list[Any]) -> Any:
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


def nms_within_crop(data: Any, iou_threshold: float) -> None:
    """Drop, in place, the lower predicted-IoU mask of every box pair above ``iou_threshold``."""
    from torchvision.ops import batched_nms

    keep = batched_nms(
        data["boxes"].float(), data["iou_preds"],
        torch.zeros_like(data["boxes"][:, 0]), iou_threshold=iou_threshold,
    )  # fmt: skip
    data.filter(keep)


def nms_across_crops(data: Any, iou_threshold: float) -> None:
    """Drop, in place, overlapping masks of different crops, preferring masks from smaller crops
    (as segment-anything does)."""
    from torchvision.ops import batched_nms, box_area

    scores = 1 / box_area(data["crop_boxes"])
    keep = batched_nms(
        data["boxes"].float(), scores.to(data["boxes"].device),
        torch.zeros_like(data["boxes"][:, 0]), iou_threshold=iou_threshold,
    )  # fmt: skip
    data.filter(keep)


def remove_small_regions(data: Any, settings: GeneratorSettings) -> Any:
    """segment-anything's own postprocess_small_regions (fill small holes, drop small islands,
    re-NMS preferring untouched masks), at the NMS threshold its generator uses."""
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator.postprocess_small_regions(
        data, settings.min_mask_region_area, max(settings.box_nms_thresh, settings.crop_nms_thresh)
    )


def masks_at_plate(
    data: Any, plate_wh: tuple[int, int], work_wh: tuple[int, int], opaque: np.ndarray | None
) -> list[GeneratedMask]:
    """The working-resolution masks of ``data`` at plate resolution, best predicted IoU first.

    ``opaque`` (bool [height, width]) removes transparent pixels; a mask left empty is dropped."""
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
