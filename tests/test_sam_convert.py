"""Original segment-anything checkpoints converted to transformers' SamModel: small custom SAMs built
from segment-anything's own modules give the same image embeddings, low-res mask logits and IoU
predictions after conversion; the released vit_b/l/h layouts map key for key (on the meta device)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from transformers import SamModel

from awb_dagster.instruments.sam_convert import (
    VARIANTS,
    CheckpointConversionError,
    check_keys,
    config_from_original,
    load_original_as_transformers,
    model_from_original,
    original_to_transformers,
    processor_for,
    variant_of,
)

# Both libraries compute the same float32 math in a different order (SDPA vs explicit softmax,
# fused vs split LayerNorm): observed differences are ~1e-6 of the outputs' magnitude. 1e-5 of the
# magnitude still fails on a real mapping slip; even the decoder LayerNorm epsilon alone (1e-6
# instead of segment-anything's 1e-5) moves the logits by ~5e-5.
RELATIVE_TOLERANCE = 1e-5

SMALL = {
    # name: image encoder (img, patch, dim, depth, heads, window, global) + decoder (dim, heads, iou depth)
    "windowed-with-padding": dict(img=64, patch=8, dim=32, depth=3, heads=2, window=3, glob=(1,), out=16, dec_heads=2, iou_depth=3),
    "all-global": dict(img=64, patch=16, dim=24, depth=2, heads=3, window=4, glob=(0, 1), out=16, dec_heads=4, iou_depth=2),
    "deep-iou-head": dict(img=32, patch=8, dim=16, depth=2, heads=1, window=2, glob=(), out=8, dec_heads=2, iou_depth=4),
}  # fmt: skip


def small_original_sam(dims: dict, seed: int = 0) -> Sam:
    """A segment-anything Sam with small dims, every parameter drawn at random (its own init leaves
    positional tables at zero, which would hide a swapped mapping)."""
    grid = dims["img"] // dims["patch"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=dims["img"], patch_size=dims["patch"], embed_dim=dims["dim"], depth=dims["depth"],
                num_heads=dims["heads"], mlp_ratio=2.0, out_chans=dims["out"], qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=dims["window"], global_attn_indexes=dims["glob"],
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dims["out"], image_embedding_size=(grid, grid),
                input_image_size=(dims["img"], dims["img"]), mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=dims["out"],
                transformer=TwoWayTransformer(depth=2, embedding_dim=dims["out"], mlp_dim=24, num_heads=dims["dec_heads"]),
                num_multimask_outputs=3, iou_head_depth=dims["iou_depth"], iou_head_hidden_dim=12,
            ),
        )  # fmt: skip
        with torch.no_grad():
            for name, param in sam.named_parameters():
                is_norm_scale = name.endswith("weight") and param.ndim == 1 and bool(torch.all(param == 1))  # LayerNorms
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if is_norm_scale else 0.0))
    return sam.eval()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=RELATIVE_TOLERANCE * scale)


def _assert_same_outputs(sam: Sam, model: SamModel, img: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, img, img, generator=generator)
    points = torch.rand(7, 1, 2, generator=generator) * img  # one point prompt per mask, input-frame pixels
    labels = torch.ones(7, 1, dtype=torch.long)
    with torch.inference_mode():
        expected_embeddings = sam.image_encoder(pixels)
        sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        expected_logits, expected_iou = sam.mask_decoder(
            image_embeddings=expected_embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
        )  # fmt: skip
        embeddings = model.get_image_embeddings(pixels)
        output = model(
            image_embeddings=embeddings, input_points=points[None], input_labels=labels[None], multimask_output=True
        )
    _assert_close(embeddings, expected_embeddings)
    _assert_close(output.pred_masks[0], expected_logits)  # [points, 3, 4*grid, 4*grid]
    _assert_close(output.iou_scores[0], expected_iou)  # [points, 3]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_converted_small_sam_gives_the_same_embeddings_masks_and_iou(name):
    dims = SMALL[name]
    sam = small_original_sam(dims)
    state_dict = sam.state_dict()
    config = config_from_original(state_dict, decoder_num_heads=dims["dec_heads"])
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (dims["dim"], dims["depth"], dims["heads"])
    assert list(vision.global_attn_indexes) == list(dims["glob"]) or (
        # A window that spans the whole token grid is global attention; both read it so.
        dims["window"] == dims["img"] // dims["patch"] and len(vision.global_attn_indexes) == dims["depth"]
    )
    assert config.mask_decoder_config.iou_head_depth == dims["iou_depth"]
    assert variant_of(config) == "custom"
    model = model_from_original(state_dict, decoder_num_heads=dims["dec_heads"])
    _assert_same_outputs(sam, model, dims["img"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_released_layouts_map_key_for_key(variant):
    with torch.device("meta"):  # shapes only: no memory, no init time
        state_dict = sam_model_registry[variant]().state_dict()
    config = config_from_original(state_dict)
    vision = config.vision_config
    embed_dim, depth, heads, global_indexes = VARIANTS[variant]
    assert variant_of(config) == variant
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (embed_dim, depth, heads)
    assert tuple(vision.global_attn_indexes) == global_indexes
    assert (vision.image_size, vision.patch_size, vision.window_size, vision.mlp_dim) == (1024, 16, 14, 4 * embed_dim)
    decoder = config.mask_decoder_config
    assert (decoder.hidden_size, decoder.mlp_dim, decoder.num_attention_heads, decoder.iou_head_depth) == (256, 2048, 8, 3)
    with torch.device("meta"):
        skeleton = SamModel(config)
    check_keys(skeleton, original_to_transformers(state_dict))


def test_unmapped_key_is_named():
    state_dict = dict(small_original_sam(SMALL["all-global"]).state_dict())
    state_dict["mask_decoder.hf_token.weight"] = torch.zeros(1, 16)  # e.g. a SAM-HQ key
    with pytest.raises(CheckpointConversionError, match=r"mask_decoder\.hf_token\.weight.*SAM-HQ"):
        original_to_transformers(state_dict)


def test_missing_key_is_named():
    dims = SMALL["all-global"]
    state_dict = dict(small_original_sam(dims).state_dict())
    del state_dict["image_encoder.blocks.1.norm2.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing \['vision_encoder\.layers\.1\.layer_norm2\.bias'\]"):
        model_from_original(state_dict, decoder_num_heads=dims["dec_heads"])


def test_not_a_sam_checkpoint_is_named():
    with pytest.raises(CheckpointConversionError, match="image_encoder.patch_embed.proj.weight"):
        config_from_original({"encoder.weight": torch.zeros(2, 2)})


def test_pixel_statistics_are_checked_and_dropped():
    state_dict = dict(small_original_sam(SMALL["all-global"]).state_dict())
    state_dict["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    state_dict["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    assert "pixel_mean" not in original_to_transformers(state_dict)
    state_dict["pixel_std"] = torch.ones(3, 1, 1)
    with pytest.raises(CheckpointConversionError, match="pixel_std"):
        original_to_transformers(state_dict)


def test_load_from_a_pth_file(tmp_path):
    dims = SMALL["windowed-with-padding"]
    sam = small_original_sam(dims, seed=3)
    path = tmp_path / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    model = load_original_as_transformers(path, decoder_num_heads=dims["dec_heads"])
    _assert_same_outputs(sam, model, dims["img"], seed=4)

    torch.save({"model": sam.state_dict()}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointConversionError, match="wrapped.pth: not a flat state dict"):
        load_original_as_transformers(tmp_path / "wrapped.pth")


def test_processor_matches_the_model_input():
    with torch.device("meta"):
        config = config_from_original(sam_model_registry["vit_b"]().state_dict())
    image_processor = processor_for(config).image_processor
    assert image_processor.size == {"longest_edge": 1024}
    assert image_processor.pad_size == {"height": 1024, "width": 1024}
    assert image_processor.mask_size == {"longest_edge": 256}
