"""A tiny checkpoint in segment-anything's own ``.pth`` format (``torch.save`` of the state dict,
as the official ``sam_vit_*.pth`` files are published), for the SAM source and box-prompt tests."""

from __future__ import annotations


def build_tiny_original_sam(seed: int = 0) -> bytes:
    """A tiny SAM in segment-anything's ``.pth`` format (``torch.save`` of the state dict, as the
    official ``sam_vit_*.pth`` files are) of :func:`tiny_original_sam`."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(tiny_original_sam(seed).state_dict(), buffer)
    return buffer.getvalue()


def tiny_original_sam(seed: int = 0) -> object:
    """A tiny ``segment_anything.modeling.Sam`` with small dims and seeded random weights. The
    position tables segment-anything initializes to zero are drawn from N(0, 0.02), as
    ``_tiny_sam`` does for its vision tower, so random-weight masks have some structure."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=16,
                use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
                norm_layer=lambda dim: torch.nn.LayerNorm(dim, eps=1e-6),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
            ),
            # segment-anything's decoder always has 8 heads (the converter assumes it).
            mask_decoder=MaskDecoder(
                transformer_dim=16, transformer=TwoWayTransformer(depth=2, embedding_dim=16, num_heads=8, mlp_dim=32),
                iou_head_depth=3, iou_head_hidden_dim=16,
            ),
        )  # fmt: skip
        with torch.no_grad():
            for name, tensor in sam.image_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    tensor.normal_(0.0, 0.02)
    return sam.eval()
