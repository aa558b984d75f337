"""Tiny checkpoints of the exotic embedding families (seed 4), each in its published hub layout.

open_clip repos, in the layout open_clip's ``hf-hub:`` loader reads: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) beside the weights.

- ``tiny_open_clip_files``: the layout of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (open_clip's own
  ViT image tower and text transformer, ``CLIP``), weights in ``open_clip_model.safetensors``.
- ``tiny_biomedclip_files``: the layout of ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``
  (a timm ViT image tower with a linear projection, a Hugging Face BERT text tower with an MLP
  projection and the cls-last-hidden-state pooler, ``CustomTextCLIP``), weights only in
  ``open_clip_pytorch_model.bin`` (``torch.save`` of the state dict), as that repo holds them. The
  timm tower is ``test_vit`` (timm's own tiny ViT) instead of ``vit_base_patch16_224``; the BERT
  is built from a tiny ``BertConfig`` (the real config names another repo, which is not fetched).

Both from open_clip's real classes. ``tiny_aimv2``: transformers' ``Aimv2VisionModel`` (no attention
pooling head, as the distilled vision-only checkpoints) with a ``CLIPImageProcessor``, saved in
transformers' native layout (``config.json`` with ``model_type = "aimv2_vision_model"``,
``model.safetensors``, ``preprocessor_config.json``). Seeded random weights: the vectors carry no
meaning.
"""

from __future__ import annotations

import io
import json

# Published on the demo hub (tests pin them), but not pinned by `awb demo`, which stays fast: its
# one exotic step is the BiomedCLIP-layout tower (open_clip loader, .bin weights) in the atlas.
# `awb demo publish awb-demo/tiny-aimv2` (or tiny-open-clip) pins one into a demo home by hand.
DEMO_NOT_PINNED = ("awb-demo/tiny-open-clip", "awb-demo/tiny-aimv2")

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# BiomedCLIP's text tower as its open_clip_config.json names it (never fetched here).
BIOMED_TEXT_MODEL = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _config_bytes(model_cfg: dict, preprocess_cfg: dict) -> bytes:
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2, sort_keys=True).encode()


def tiny_open_clip_files() -> dict[str, bytes]:
    """A tiny open_clip ``CLIP`` (ViT-H-14's structure at toy sizes), from the current torch seed."""
    from open_clip.model import CLIP
    from safetensors.torch import save

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2},
    }
    model = CLIP(**model_cfg)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    return {
        "open_clip_config.json": _config_bytes(model_cfg, {"mean": OPENAI_MEAN, "std": OPENAI_STD}),
        "open_clip_model.safetensors": save(state),
    }


def tiny_biomedclip_files() -> dict[str, bytes]:
    """A tiny BiomedCLIP-layout ``CustomTextCLIP`` (timm ViT + HF BERT), from the current torch seed."""
    import torch
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import _build_vision_tower
    from transformers import BertConfig

    embed_dim = 16
    vision_cfg = {
        "timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
        "image_size": 32,
    }  # fmt: skip
    text_cfg = {
        "hf_model_name": BIOMED_TEXT_MODEL, "hf_tokenizer_name": BIOMED_TEXT_MODEL, "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16,
    }  # fmt: skip
    visual = _build_vision_tower(embed_dim, vision_cfg)
    bert = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=16,
    )  # fmt: skip
    text = HFTextEncoder(
        BIOMED_TEXT_MODEL, output_dim=embed_dim, config=bert, pooler_type="cls_last_hidden_state_pooler",
        proj_type="mlp", pretrained=False,
    )  # fmt: skip
    state = {
        **{f"visual.{k}": v for k, v in visual.state_dict().items()},
        **{f"text.{k}": v for k, v in text.state_dict().items()},
        "logit_scale": torch.tensor(4.6052),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    model_cfg = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    return {
        "open_clip_config.json": _config_bytes(model_cfg, {"mean": OPENAI_MEAN, "std": OPENAI_STD}),
        "open_clip_pytorch_model.bin": buffer.getvalue(),
    }


def tiny_aimv2() -> tuple[object, object]:
    """A tiny ``Aimv2VisionModel`` and its image processor, from the current torch seed."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, CLIPImageProcessor

    config = Aimv2VisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, use_head=False,
    )  # fmt: skip
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=OPENAI_MEAN, image_std=OPENAI_STD
    )
    return Aimv2VisionModel(config), processor
