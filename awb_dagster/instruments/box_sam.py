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

from awb_dagster.instruments.common import InstrumentError, norm_text, size_text
from awb_dagster.instruments.sam import MaskGenerator

BOX_PROMPT_VERSION = "box-sam-v2"  # v2: stability score per mask, transparent pixels removed
MASK_THRESHOLD = 0.0  # segment-anything's SamPredictor.mask_threshold
STABILITY_OFFSET = 1.0  # segment-anything's automatic generator default (stability_score_offset)


@dataclass(frozen=True)
class BoxMask:
    """The mask one box prompted: bool [height, width] at the plate's size, SAM's predicted IoU,
    and the stability score of its logits (segment-anything's, offset :data:`STABILITY_OFFSET`)."""

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    box_xyxy: tuple[float, float, float, float]  # the prompt, plate pixels


def box_prompt_tag(generator: MaskGenerator) -> str:
    """What shapes a box-prompted mask of ``generator``'s pin: decoding, color and alpha policies,
    the SAM processor, the model, the single-mask output and the upscale (no AMG settings: no grid)."""
    spec = generator.preprocess_spec
    return (
        f"{BOX_PROMPT_VERSION};dec={spec['decoder']};color={spec['color_policy']};alpha={spec['alpha_policy']};"
        f"proc={spec['processor']}:{spec['resample']}:{size_text(spec['size'])}:pad={size_text(spec['pad_size'])};"
        f"norm={norm_text(spec)};model={spec['model_class']}:{spec['weights_format']}:out=single-mask;"
        f"upscale=sam-processor-bilinear;threshold={MASK_THRESHOLD:g}"
    )


@torch.inference_mode()
def box_prompted_masks(
    generator: MaskGenerator, image: PIL.Image.Image, boxes_xyxy: np.ndarray, opaque: np.ndarray | None = None
) -> list[BoxMask]:
    """One mask per box (``boxes_xyxy``: float [N, 4], plate pixels) over an RGB plate.

    ``opaque`` (bool [height, width]) removes transparent pixels from every mask, as the SAM
    alpha policy does (a mask may then be empty: the caller decides)."""
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
    if opaque is not None and opaque.shape != (height, width):
        raise InstrumentError(f"alpha mask is {opaque.shape[::-1]}, the plate {(width, height)}")
    resized_h, resized_w = (int(v) for v in inputs["reshaped_input_sizes"][0])
    scale = np.array([resized_w / width, resized_h / height, resized_w / width, resized_h / height])
    input_boxes = torch.as_tensor(boxes * scale, dtype=torch.float32, device=generator.device)[None]
    output = generator.model(image_embeddings=embeddings, input_boxes=input_boxes, multimask_output=False)
    pred_masks = output.pred_masks.float().cpu()  # [1, N, 1, h, w] at the decoder's resolution
    scores = output.iou_scores.float().cpu()[0, :, 0]
    masks = []
    for i in range(len(boxes)):  # one plate-sized logit map at a time: large plates, many boxes
        logits = generator.processor.image_processor.post_process_masks(
            pred_masks[:, i : i + 1], inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
        )[0][0]  # [1, height, width]
        values = logits[0].numpy()
        mask = values > MASK_THRESHOLD
        if opaque is not None:
            mask &= opaque
        masks.append(BoxMask(mask, float(scores[i]), stability_score(values), tuple(float(v) for v in boxes[i])))
    return masks


def stability_score(logits: np.ndarray) -> float:
    """segment-anything's ``calculate_stability_score`` for one logit map: the IoU of the mask
    thresholded at ``MASK_THRESHOLD + STABILITY_OFFSET`` with the one at ``MASK_THRESHOLD -
    STABILITY_OFFSET`` (the first lies inside the second), counted on booleans: its int16 sums over a
    plate-sized map cost more than the decoder."""
    inner = np.count_nonzero(logits > MASK_THRESHOLD + STABILITY_OFFSET)
    outer = np.count_nonzero(logits > MASK_THRESHOLD - STABILITY_OFFSET)
    return inner / outer if outer else 0.0
