"""Box-prompted SAM masks (seed 6 → 5): detected boxes prompt the pinned SAM's mask decoder, one
mask per box, as segment-anything's ``SamPredictor.predict(box=..., multimask_output=False)``
does: the plate resized by the pin's own processor (longest side to the model input), the box
scaled into that frame, the single-mask output upscaled to the plate and thresholded at 0.

Plain Python: no Dagster here. It runs on a loaded :class:`~awb_dagster.instruments.sam.MaskGenerator`
(the same pinned SAM as ``sam_masks``, never the automatic generator's point grid). SAM-HQ pins
are refused: their decoder takes the encoder's intermediate features, not wired here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL
import torch

from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.sam import MaskGenerator

BOX_PROMPT_VERSION = "box-sam-v1"


@dataclass(frozen=True)
class BoxMask:
    """The mask one box prompted: bool [height, width] at the plate's size, SAM's predicted IoU."""

    mask: np.ndarray
    predicted_iou: float
    box_xyxy: tuple[float, float, float, float]  # the prompt, plate pixels


@torch.inference_mode()
def box_prompted_masks(generator: MaskGenerator, image: PIL.Image.Image, boxes_xyxy: np.ndarray) -> list[BoxMask]:
    """One mask per box (``boxes_xyxy``: float [N, 4], plate pixels) over an RGB plate."""
    model_class = type(generator.model).__name__
    if model_class != "SamModel":
        raise InstrumentError(
            f"{generator.instrument.id}: box prompts run on SamModel pins only, not {model_class}; pin a SAM model"
        )
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return []
    inputs = generator.processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(generator.device, generator.dtype)
    embeddings = generator.model.get_image_embeddings(pixel_values)
    height, width = (int(v) for v in inputs["original_sizes"][0])
    resized_h, resized_w = (int(v) for v in inputs["reshaped_input_sizes"][0])
    scale = np.array([resized_w / width, resized_h / height, resized_w / width, resized_h / height])
    input_boxes = torch.as_tensor(boxes * scale, dtype=torch.float32, device=generator.device)[None]
    output = generator.model(image_embeddings=embeddings, input_boxes=input_boxes, multimask_output=False)
    masks = generator.processor.image_processor.post_process_masks(
        output.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=True
    )[0]  # [N, 1, height, width]
    scores = output.iou_scores.float().cpu()[0, :, 0]
    return [
        BoxMask(masks[i, 0].numpy().astype(bool), float(scores[i]), tuple(float(v) for v in boxes[i]))
        for i in range(len(boxes))
    ]
