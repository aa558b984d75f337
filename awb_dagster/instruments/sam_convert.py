"""Original segment-anything checkpoints as transformers ``SamModel`` weights.

segment-anything's ``sam_vit_b/l/h`` ``.pth`` files hold a flat state dict in its own layout
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``). This module renames every key to
transformers' ``SamModel`` layout (the mapping of transformers' ``convert_sam_to_hf.py``, which the
installed wheel does not ship) and infers the matching :class:`~transformers.SamConfig` from the
tensor shapes, so the official variants and small custom test models convert alike.

Two hyperparameters leave no trace in the shapes and are therefore arguments:
``decoder_num_heads`` (8 in every released SAM) and the image encoder's MLP activation (GELU in
both libraries). The mask decoder's LayerNorm epsilon is set to segment-anything's 1e-5 (the
transformers default, 1e-6, differs in the 6th decimal of the decoder's normalized activations).

Every key must be mapped: a key no rule knows, or a model key no checkpoint key fills, is an
error that names the keys. Buffers ``pixel_mean``/``pixel_std`` (present in some checkpoints)
belong to preprocessing: they are accepted only when they equal the ImageNet statistics that
:func:`processor_for` configures, and are not part of the model weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from awb_dagster.instruments.common import InstrumentError

# segment-anything's Sam.pixel_mean / pixel_std (0-255 scale) = ImageNet statistics.
ORIGINAL_PIXEL_MEAN = (123.675, 116.28, 103.53)
ORIGINAL_PIXEL_STD = (58.395, 57.12, 57.375)
ORIGINAL_DECODER_NUM_HEADS = 8
ORIGINAL_DECODER_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by TwoWayTransformer

# segment_anything.build_sam: (embed dim, depth, heads, global attention indexes) per variant.
VARIANTS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

_PREPROCESSING_KEYS = ("pixel_mean", "pixel_std")
_TIED_POSITIONAL = "prompt_encoder.shared_embedding.positional_embedding"
_SHARED_POSITIONAL = "shared_image_embedding.positional_embedding"
_WB = r"(weight|bias)"


class CheckpointConversionError(InstrumentError):
    """An original SAM checkpoint does not map onto transformers' SamModel."""


def _mlp_layer(prefix: str, depth_of: Callable[[str], int]) -> Callable[[re.Match[str]], str]:
    """segment-anything's MLP ``layers.{0..d-1}`` -> transformers' proj_in / layers.{i-1} / proj_out."""

    def rename(match: re.Match[str]) -> str:
        owner, index, param = match.group(1), int(match.group(2)), match.group(3)
        depth = depth_of(owner)
        name = "proj_in" if index == 0 else "proj_out" if index == depth - 1 else f"layers.{index - 1}"
        return f"{prefix}{owner}.{name}.{param}"

    return rename


def _rules(depth_of: Callable[[str], int]) -> list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]:
    """(full-match pattern on the original key, transformers key template or function)."""
    table: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
        # image encoder
        (r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
        (rf"image_encoder\.patch_embed\.proj\.{_WB}", r"vision_encoder.patch_embed.projection.\1"),
        (rf"image_encoder\.blocks\.(\d+)\.norm([12])\.{_WB}", r"vision_encoder.layers.\1.layer_norm\2.\3"),
        (
            r"image_encoder\.blocks\.(\d+)\.attn\.(qkv\.weight|qkv\.bias|proj\.weight|proj\.bias|rel_pos_h|rel_pos_w)",
            r"vision_encoder.layers.\1.attn.\2",
        ),
        (rf"image_encoder\.blocks\.(\d+)\.mlp\.(lin[12])\.{_WB}", r"vision_encoder.layers.\1.mlp.\2.\3"),
        (r"image_encoder\.neck\.0\.weight", "vision_encoder.neck.conv1.weight"),
        (rf"image_encoder\.neck\.1\.{_WB}", r"vision_encoder.neck.layer_norm1.\1"),
        (r"image_encoder\.neck\.2\.weight", "vision_encoder.neck.conv2.weight"),
        (rf"image_encoder\.neck\.3\.{_WB}", r"vision_encoder.neck.layer_norm2.\1"),
        # prompt encoder
        (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", _TIED_POSITIONAL),
        (r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
        (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
        (rf"prompt_encoder\.mask_downscaling\.0\.{_WB}", r"prompt_encoder.mask_embed.conv1.\1"),
        (rf"prompt_encoder\.mask_downscaling\.1\.{_WB}", r"prompt_encoder.mask_embed.layer_norm1.\1"),
        (rf"prompt_encoder\.mask_downscaling\.3\.{_WB}", r"prompt_encoder.mask_embed.conv2.\1"),
        (rf"prompt_encoder\.mask_downscaling\.4\.{_WB}", r"prompt_encoder.mask_embed.layer_norm2.\1"),
        (rf"prompt_encoder\.mask_downscaling\.6\.{_WB}", r"prompt_encoder.mask_embed.conv3.\1"),
        # mask decoder
        (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
        (
            r"mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
            rf"|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)\.{_WB}",
            r"mask_decoder.transformer.\1.\2.\3",
        ),
        (rf"mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_WB}", r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
        (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_WB}", r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
        (rf"mask_decoder\.transformer\.norm_final_attn\.{_WB}", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
        (rf"mask_decoder\.output_upscaling\.0\.{_WB}", r"mask_decoder.upscale_conv1.\1"),
        (rf"mask_decoder\.output_upscaling\.1\.{_WB}", r"mask_decoder.upscale_layer_norm.\1"),
        (rf"mask_decoder\.output_upscaling\.3\.{_WB}", r"mask_decoder.upscale_conv2.\1"),
        (
            rf"mask_decoder\.(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.(\d+)\.{_WB}",
            _mlp_layer("mask_decoder.", depth_of),
        ),
    ]
    return [(re.compile(pattern), target) for pattern, target in table]


def _indexes(state_dict: Mapping[str, Any], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``{prefix}{i}.…``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in state_dict if (m := pattern.match(key))})


def _require(state_dict: Mapping[str, Any], *keys: str) -> None:
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise CheckpointConversionError(
            f"not an original segment-anything SAM state dict: missing {missing}; expected the "
            "sam_vit_b/l/h .pth layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)"
        )


def config_from_original(
    state_dict: Mapping[str, torch.Tensor], *, decoder_num_heads: int = ORIGINAL_DECODER_NUM_HEADS
) -> Any:
    """The ``SamConfig`` of an original checkpoint, read from its tensor shapes.

    Window size and global-attention blocks come from the relative position tables (a global
    block's table spans the whole token grid); attention heads from the tables' head dimension.
    """
    from transformers import SamConfig

    enc, dec = "image_encoder.", "mask_decoder."
    _require(
        state_dict, f"{enc}patch_embed.proj.weight", f"{enc}pos_embed", f"{enc}blocks.0.attn.rel_pos_h",
        f"{enc}blocks.0.mlp.lin1.weight", f"{enc}neck.0.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.mask_downscaling.3.weight",
        f"{dec}iou_token.weight", f"{dec}mask_tokens.weight", f"{dec}transformer.layers.0.mlp.lin1.weight",
        f"{dec}transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
        f"{dec}iou_prediction_head.layers.0.weight",
    )  # fmt: skip
    hidden, channels, patch, _ = state_dict[f"{enc}patch_embed.proj.weight"].shape
    _, grid_h, grid_w, _ = state_dict[f"{enc}pos_embed"].shape
    if grid_h != grid_w:
        raise CheckpointConversionError(f"pos_embed grid {grid_h}x{grid_w} is not square; SamConfig needs one image size")
    blocks = _indexes(state_dict, f"{enc}blocks.")
    head_dim = state_dict[f"{enc}blocks.0.attn.rel_pos_h"].shape[1]
    if hidden % head_dim:
        raise CheckpointConversionError(f"embed dim {hidden} is not a multiple of the rel_pos head dim {head_dim}")
    table_sizes = {i: state_dict[f"{enc}blocks.{i}.attn.rel_pos_h"].shape[0] for i in blocks}
    global_indexes = [i for i, size in table_sizes.items() if size == 2 * grid_h - 1]
    windows = {(size + 1) // 2 for i, size in table_sizes.items() if i not in global_indexes}
    if len(windows) > 1:
        raise CheckpointConversionError(f"image encoder blocks use different window sizes {sorted(windows)}")
    # With no windowed block the window size is unused; a window spanning the grid is global attention.
    window = windows.pop() if windows else grid_h
    output_channels = state_dict[f"{enc}neck.0.weight"].shape[0]

    decoder_hidden = state_dict[f"{dec}iou_token.weight"].shape[1]
    cross_dim = state_dict[f"{dec}transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    if decoder_hidden % cross_dim or cross_dim % decoder_num_heads:
        raise CheckpointConversionError(
            f"mask decoder: attention dim {cross_dim} does not divide {decoder_hidden} into "
            f"{decoder_num_heads} heads; pass the checkpoint's decoder_num_heads"
        )
    image_size = grid_h * patch
    return SamConfig(
        vision_config={
            "hidden_size": hidden,
            "output_channels": output_channels,
            "num_hidden_layers": len(blocks),
            "num_attention_heads": hidden // head_dim,
            "num_channels": channels,
            "image_size": image_size,
            "patch_size": patch,
            "mlp_dim": state_dict[f"{enc}blocks.0.mlp.lin1.weight"].shape[0],
            "qkv_bias": f"{enc}blocks.0.attn.qkv.bias" in state_dict,
            "use_abs_pos": True,
            "use_rel_pos": True,
            "window_size": window,
            "global_attn_indexes": global_indexes,
            "num_pos_feats": state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1],
        },
        prompt_encoder_config={
            "hidden_size": output_channels,
            "image_size": image_size,
            "patch_size": patch,
            "mask_input_channels": state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            "num_point_embeddings": len(_indexes(state_dict, "prompt_encoder.point_embeddings.")),
        },
        mask_decoder_config={
            "hidden_size": decoder_hidden,
            "mlp_dim": state_dict[f"{dec}transformer.layers.0.mlp.lin1.weight"].shape[0],
            "num_hidden_layers": len(_indexes(state_dict, f"{dec}transformer.layers.")),
            "num_attention_heads": decoder_num_heads,
            "attention_downsample_rate": decoder_hidden // cross_dim,
            "num_multimask_outputs": state_dict[f"{dec}mask_tokens.weight"].shape[0] - 1,
            "iou_head_depth": len(_indexes(state_dict, f"{dec}iou_prediction_head.layers.")),
            "iou_head_hidden_dim": state_dict[f"{dec}iou_prediction_head.layers.0.weight"].shape[0],
            "layer_norm_eps": ORIGINAL_DECODER_LAYER_NORM_EPS,
        },
    )


def variant_of(config: Any) -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` when the image encoder is a released variant, else ``custom``."""
    vision = config.vision_config
    shape = (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, tuple(vision.global_attn_indexes))
    return next((name for name, known in VARIANTS.items() if known == shape), "custom")


def _check_preprocessing(state_dict: Mapping[str, torch.Tensor]) -> None:
    for key, expected in zip(_PREPROCESSING_KEYS, (ORIGINAL_PIXEL_MEAN, ORIGINAL_PIXEL_STD)):
        if key in state_dict:
            value = state_dict[key].detach().float().flatten().cpu()
            if value.shape != (3,) or not torch.allclose(value, torch.tensor(expected), atol=1e-3):
                raise CheckpointConversionError(
                    f"{key} is {value.tolist()}, not segment-anything's {list(expected)}: the checkpoint "
                    "expects other normalization than SamImageProcessor's; convert with a matching processor"
                )


def original_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every original key renamed to transformers' SamModel layout (tensors shared, not copied).

    Raises :class:`CheckpointConversionError` naming every key that no rule maps, or two keys that
    map to one name.
    """
    _check_preprocessing(state_dict)
    mlp_depths: dict[str, int] = {}

    def depth_of(owner: str) -> int:
        if owner not in mlp_depths:
            mlp_depths[owner] = len(_indexes(state_dict, f"mask_decoder.{owner}.layers."))
        return mlp_depths[owner]

    rules = _rules(depth_of)
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        if key in _PREPROCESSING_KEYS:
            continue
        target = next((pattern.sub(repl, key) for pattern, repl in rules if pattern.fullmatch(key)), None)
        if target is None:
            unmapped.append(key)
        elif target in converted:
            raise CheckpointConversionError(f"two checkpoint keys map to {target}; the checkpoint is not SAM's layout")
        else:
            converted[target] = tensor
    if unmapped:
        raise CheckpointConversionError(
            f"{len(unmapped)} checkpoint keys have no SamModel counterpart: {unmapped[:20]}"
            f"{' ...' if len(unmapped) > 20 else ''}. This converter reads original segment-anything "
            "checkpoints (sam_vit_b/l/h); variants such as SAM-HQ need their own mapping"
        )
    if _TIED_POSITIONAL in converted:
        # transformers keeps the random-Fourier matrix twice, tied: the image-wide positional
        # encoding and the prompt encoder's both read segment-anything's pe_layer.
        converted[_SHARED_POSITIONAL] = converted[_TIED_POSITIONAL]
    return converted


def check_keys(model: torch.nn.Module, converted: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``converted`` fills every parameter and buffer of ``model`` with its shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(converted)
        if tuple(converted[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointConversionError(
            "converted SAM weights do not fit the inferred SamModel: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {mismatched}"
        )


def model_from_original(
    state_dict: Mapping[str, torch.Tensor], *, decoder_num_heads: int = ORIGINAL_DECODER_NUM_HEADS
) -> Any:
    """A transformers ``SamModel`` in eval mode holding the checkpoint's own tensors (its dtype
    and device, no copy, no random init); every key checked both ways."""
    from transformers import SamModel

    config = config_from_original(state_dict, decoder_num_heads=decoder_num_heads)
    converted = original_to_transformers(state_dict)
    with torch.device("meta"):  # SamModel has no non-persistent buffers: every tensor comes from the checkpoint
        model = SamModel(config)
    check_keys(model, converted)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def load_original_as_transformers(path: Path | str, *, decoder_num_heads: int = ORIGINAL_DECODER_NUM_HEADS) -> Any:
    """Read an original ``sam_vit_*.pth`` (``torch.load(weights_only=True)``) as a ``SamModel``."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointConversionError(f"{path}: not a flat state dict of tensors (an original SAM .pth is one)")
    try:
        return model_from_original(state_dict, decoder_num_heads=decoder_num_heads)
    except CheckpointConversionError as exc:
        raise CheckpointConversionError(f"{path}: {exc}") from exc


def processor_for(config: Any) -> Any:
    """segment-anything's preprocessing for ``config`` as a ``SamProcessor``: longest side resized
    to the model input, padded square, ImageNet mean/std, low-res masks at a quarter of the input."""
    from transformers import SamImageProcessor, SamProcessor

    side = config.vision_config.image_size
    image_processor = SamImageProcessor(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": side // 4},
        image_mean=[x / 255 for x in ORIGINAL_PIXEL_MEAN],
        image_std=[x / 255 for x in ORIGINAL_PIXEL_STD],
    )
    return SamProcessor(image_processor=image_processor)
