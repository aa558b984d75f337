"""Tiny checkpoints of the real transformers architectures, for tests and the offline demo.

Each builder instantiates the actual model class (CLIP, SigLIP, DINOv2, SAM, SAM-HQ) with tiny
dimensions and seeded random weights, and saves it exactly as a hub repo holds it: ``config.json``,
``model.safetensors`` and the real image processor's ``preprocessor_config.json``. The same seed
gives the same bytes, so a repo published from them gets the same commit sha every time.
:func:`awb_dagster.demo.tiny_sam_original.build_tiny_original_sam` writes a tiny checkpoint in
segment-anything's own ``.pth`` format instead, as the official ``sam_vit_*.pth`` files are published.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from awb_dagster.demo.tiny_exotic import tiny_aimv2, tiny_biomedclip_files, tiny_open_clip_files
from awb_dagster.demo.tiny_aesthetic_v1 import tiny_aesthetic_v1_files
from awb_dagster.demo.tiny_birder import tiny_birder_files
from awb_dagster.demo.tiny_grounding import tiny_grounding_dino
from awb_dagster.demo.tiny_u2net import tiny_u2net_files
from awb_dagster.demo.tiny_text import save_tiny_clip_tokenizer, save_tiny_siglip_tokenizer

if TYPE_CHECKING:
    from awb_dagster.demo.hub import LoopbackHub

CheckpointKind = Literal["clip", "siglip", "dinov2", "sam", "sam-hq", "mask2former", "convnext-classifier", "aesthetic-mlp",
                         "detr", "grounding-dino", "u2net", "open-clip", "biomedclip", "aimv2", "birder-classifier",
                         "aesthetic-v1"]

DEMO_REPOS: dict[str, CheckpointKind] = {
    "awb-demo/tiny-clip": "clip",
    "awb-demo/tiny-siglip": "siglip",
    "awb-demo/tiny-dinov2": "dinov2",
    "awb-demo/tiny-sam": "sam",
    "awb-demo/tiny-sam-hq": "sam-hq",
    "awb-demo/tiny-mask2former": "mask2former",
    "awb-demo/tiny-wikiart-convnext": "convnext-classifier",
    "awb-demo/tiny-aesthetic-mlp": "aesthetic-mlp",
    "awb-demo/tiny-detr": "detr",
    "awb-demo/tiny-grounding-dino": "grounding-dino",
    "awb-demo/tiny-u2net": "u2net",
    "awb-demo/tiny-open-clip": "open-clip",
    "awb-demo/tiny-biomedclip": "biomedclip",
    "awb-demo/tiny-aimv2": "aimv2",
    "awb-demo/tiny-places-birder": "birder-classifier",
    "awb-demo/tiny-aesthetic-v1": "aesthetic-v1",
}

DEMO_PIPELINE_TAGS: dict[CheckpointKind, str | None] = {
    "clip": "zero-shot-image-classification",
    "siglip": "zero-shot-image-classification",
    "dinov2": "image-feature-extraction",
    "sam": "mask-generation",
    "sam-hq": "mask-generation",
    "mask2former": "image-segmentation",
    "convnext-classifier": "image-classification",
    "aesthetic-mlp": None,  # none declared, as for camenduru/improved-aesthetic-predictor
    "detr": "object-detection",
    "grounding-dino": "zero-shot-object-detection",
    "u2net": None,  # none declared, as for Carve/u2net-universal
    "open-clip": "zero-shot-image-classification",
    "biomedclip": "zero-shot-image-classification",
    "aimv2": "image-feature-extraction",
    "birder-classifier": "image-classification",
    "aesthetic-v1": "feature-extraction",  # as shunk031/aesthetics-predictor-v1-* declare
}

DEMO_LICENSE = "apache-2.0"
# Demo repos published under another license: tiny-mask2former carries the real model's flagged
# `other`, so the opt-in gate is exercised offline.
DEMO_REPO_LICENSES: dict[str, str] = {"awb-demo/tiny-mask2former": "other"}

# Shared tiny transformer geometry: 2 layers, 4 heads, small MLP.
_TINY_ENCODER = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
_TINY_TEXT = {
    **_TINY_ENCODER,
    "vocab_size": 99,
    "max_position_embeddings": 16,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def _tiny_clip() -> tuple[object, object]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    # projection_dim is repeated in the sub-configs: CLIPVisionModelWithProjection reads vision_config's.
    config = CLIPConfig(
        text_config={**_TINY_TEXT, "hidden_size": 32, "projection_dim": 32},
        vision_config={
            **_TINY_ENCODER, "hidden_size": 32, "image_size": 32, "patch_size": 8, "projection_dim": 32
        },
        projection_dim=32,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    return CLIPModel(config), processor


def _tiny_siglip() -> tuple[object, object]:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    config = SiglipConfig(
        text_config={**_TINY_TEXT, "hidden_size": 48},
        vision_config={**_TINY_ENCODER, "hidden_size": 48, "image_size": 32, "patch_size": 8},
    )
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return SiglipModel(config), processor


def _tiny_dinov2() -> tuple[object, object]:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=40, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, patch_size=14, image_size=28
    )
    # Same recipe as facebook/dinov2-*: bicubic shortest-edge resize, center crop, ImageNet statistics.
    processor = BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        do_center_crop=True,
        resample=3,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
    )
    return Dinov2Model(config), processor


# One tiny SAM geometry for SAM and SAM-HQ. The vision neck's output_channels must equal the prompt
# encoder's and mask decoder's hidden size. SAM initializes its vision tower near zero
# (initializer_range 1e-10); 0.02 gives random-weight masks with some structure, so the
# generator's filters have something to keep or reject.
_TINY_SAM_VISION = {
    "hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 64, "patch_size": 16, "window_size": 2, "global_attn_indexes": [1],
    "mlp_dim": 64, "num_pos_feats": 8, "initializer_range": 0.02,
}  # fmt: skip
_TINY_SAM_PROMPT = {"hidden_size": 16, "image_size": 64, "patch_size": 16, "mask_input_channels": 4}
_TINY_SAM_DECODER = {"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "iou_head_hidden_dim": 16}  # fmt: skip


def _tiny_sam_image_processor() -> object:
    from transformers import SamImageProcessor

    # Same recipe as facebook/sam-vit-* and syscv-community/sam-hq-vit-*: longest side resized,
    # padded square, ImageNet statistics.
    return SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16}
    )


def _tiny_sam() -> tuple[object, object]:
    from transformers import SamConfig, SamModel, SamProcessor

    config = SamConfig(
        vision_config=_TINY_SAM_VISION, prompt_encoder_config=_TINY_SAM_PROMPT, mask_decoder_config=_TINY_SAM_DECODER
    )
    return SamModel(config), SamProcessor(image_processor=_tiny_sam_image_processor())


def _tiny_sam_hq() -> tuple[object, object]:
    from transformers import SamHQConfig, SamHQModel, SamHQProcessor

    # The HQ decoder's vit_dim must equal the vision hidden size, whose global-attention block
    # (index 1) supplies the early ViT features the HQ token fuses.
    config = SamHQConfig(
        vision_config=_TINY_SAM_VISION,
        prompt_encoder_config=_TINY_SAM_PROMPT,
        mask_decoder_config={**_TINY_SAM_DECODER, "vit_dim": _TINY_SAM_VISION["hidden_size"]},
    )
    return SamHQModel(config), SamHQProcessor(image_processor=_tiny_sam_image_processor())


# The first ten ADE20K class names at their ADE20K ids (facebook/mask2former-*-ade-semantic id2label).
_ADE20K_FIRST_LABELS = ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass")


def _tiny_mask2former() -> tuple[object, object]:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    # A Swin backbone as in facebook/mask2former-swin-*; the pixel decoder's GroupNorm(32) needs
    # feature sizes divisible by 32. init_std 1.0 (not 0.02) gives random-weight class maps with
    # several classes, so the area tables and previews have something to show.
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=8, init_std=1.0,
        id2label=dict(enumerate(_ADE20K_FIRST_LABELS)), label2id={n: i for i, n in enumerate(_ADE20K_FIRST_LABELS)},
    )  # fmt: skip
    # Same recipe as the ADE20K semantic checkpoints: shortest-edge resize with a longest-edge cap,
    # sides rounded up to a multiple of 32, ImageNet statistics, ADE's reduced labels.
    processor = Mask2FormerImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 256}, size_divisor=32, ignore_index=255, do_reduce_labels=True,
        num_labels=len(_ADE20K_FIRST_LABELS), image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
    )  # fmt: skip
    return Mask2FormerForUniversalSegmentation(config), processor


# Five neutral labels: the demo does not claim any real checkpoint's label set.
DEMO_CLASSIFIER_LABELS = ("demo-style-a", "demo-style-b", "demo-style-c", "demo-style-d", "demo-style-e")


def _tiny_convnext_classifier() -> tuple[object, object]:
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    labels = dict(enumerate(DEMO_CLASSIFIER_LABELS))
    config = ConvNextConfig(
        num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
        id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    # Same recipe as davanstrien/convnext-tiny-224-wikiart (a facebook/convnext-tiny-224 fine-tune):
    # shortest edge / crop_pct, center crop, bicubic, ImageNet statistics; here at 32 px.
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.875, resample=3, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD
    )
    return ConvNextForImageClassification(config), processor


# Three neutral labels: the demo does not claim any real detector's label set.
DEMO_DETECTION_LABELS = ("demo-object-a", "demo-object-b", "demo-object-c")


def _tiny_detr() -> tuple[object, object]:
    """DetrForObjectDetection with transformers' own ResNet backbone (``use_timm_backbone=False``,
    ``backbone_config`` of type ``resnet``, ``use_pretrained_backbone=False``): the layout of
    facebook/detr-resnet-50's ``no_timm`` revision, so it loads without timm."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    labels = dict(enumerate(DEMO_DETECTION_LABELS))
    backbone = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", out_features=["stage2"]
    )
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16,
        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    model = DetrForObjectDetection(config)
    # DETR initializes the last box and class layers near zero (every query the same centred box);
    # draw them from N(0, 1) so random-weight boxes and scores vary.
    with torch.no_grad():
        model.model.query_position_embeddings.weight.normal_(0, 1.0)
        model.bbox_predictor.layers[-1].weight.normal_(0, 1.0)
        model.class_labels_classifier.weight.normal_(0, 1.0)
    # DETR's recipe (shortest edge 800, longest 1333, bilinear, ImageNet statistics, padding), at 64/96 px.
    processor = DetrImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD
    )
    return model, processor


_BUILDERS: dict[CheckpointKind, Callable[[], tuple[object, object]]] = {
    "clip": _tiny_clip,
    "siglip": _tiny_siglip,
    "dinov2": _tiny_dinov2,
    "sam": _tiny_sam,
    "sam-hq": _tiny_sam_hq,
    "mask2former": _tiny_mask2former,
    "convnext-classifier": _tiny_convnext_classifier,
    "detr": _tiny_detr,
    "grounding-dino": tiny_grounding_dino,
    "aimv2": tiny_aimv2,
}


# The tiny aesthetic MLP's weight file (roster weight_id): a torch.save state dict, as the real repo's .pth files.
DEMO_AESTHETIC_MLP_FILE = "tiny-aesthetic-mlp-linearMSE.pth"


def _tiny_aesthetic_mlp_files() -> dict[str, bytes]:
    """improved-aesthetic-predictor's MLP over the tiny CLIP's 32-d embeddings, as a .pth state dict."""
    import io

    import torch

    from awb_dagster.instruments.aesthetic_mlp import aesthetic_mlp

    buffer = io.BytesIO()
    torch.save(aesthetic_mlp(32).state_dict(), buffer)
    return {DEMO_AESTHETIC_MLP_FILE: buffer.getvalue()}


# Kinds whose repo files are not a transformers save_pretrained, and the hub library they declare.
_FILE_BUILDERS: dict[CheckpointKind, Callable[[], dict[str, bytes]]] = {
    "aesthetic-mlp": _tiny_aesthetic_mlp_files, "u2net": tiny_u2net_files,
    "open-clip": tiny_open_clip_files, "biomedclip": tiny_biomedclip_files,
    "birder-classifier": tiny_birder_files, "aesthetic-v1": tiny_aesthetic_v1_files,
}  # fmt: skip
# Kinds whose text tower needs a tokenizer (awb search, zero-shot labels): openai/clip-vit-*'s
# CLIPTokenizer, google/siglip-*'s SiglipTokenizer over spiece.model.
_TOKENIZERS: dict[CheckpointKind, Callable[[Path], None]] = {"clip": save_tiny_clip_tokenizer, "siglip": save_tiny_siglip_tokenizer}
_LIBRARIES: dict[CheckpointKind, str | None] = {
    "aesthetic-mlp": None, "u2net": None, "open-clip": "open_clip", "biomedclip": "open_clip", "birder-classifier": "birder",
}  # fmt: skip


def build_tiny_repo(kind: CheckpointKind, seed: int = 0, *, tokenizer: bool = True) -> dict[str, bytes]:
    """Return the files of a tiny ``kind`` checkpoint (file name -> bytes), deterministic for ``seed``
    (``tokenizer=False``: the tiny CLIP or SigLIP without its text tower's tokenizer, as first published)."""
    import torch

    if kind in _FILE_BUILDERS:  # not transformers models: their own files
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _FILE_BUILDERS[kind]()
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny checkpoint kind {kind!r}; expected one of {sorted(_BUILDERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[kind]()
    with tempfile.TemporaryDirectory(prefix=f"awb-tiny-{kind}-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if kind in _TOKENIZERS and tokenizer:  # the text tower's tokenizer, as the real repos ship it (awb search)
            _TOKENIZERS[kind](Path(tmp))
        return {path.name: path.read_bytes() for path in sorted(Path(tmp).iterdir()) if path.is_file()}


def publish_demo_repos(
    hub: LoopbackHub, seed: int = 0, *, only: Iterable[str] | None = None
) -> dict[str, str]:
    """Commit the demo repos (every one, or those in ``only``) to ``hub``; return repo id -> head sha.

    With seed 0 the tiny CLIP and SigLIP get two revisions each: the image side as first published
    (homes sealed before, such as tests/fixtures/pre_engine_store, name it), then the same files plus
    the text tower's tokenizer."""
    wanted = set(DEMO_REPOS if only is None else only)
    heads = {}
    for repo_id, kind in DEMO_REPOS.items():
        if repo_id not in wanted:
            continue
        card = {"license": DEMO_REPO_LICENSES.get(repo_id, DEMO_LICENSE), "pipeline_tag": DEMO_PIPELINE_TAGS[kind],
                "library_name": _LIBRARIES.get(kind, "transformers")}  # fmt: skip
        if kind in _TOKENIZERS and seed == 0:
            hub.add_commit(repo_id, build_tiny_repo(kind, seed=seed, tokenizer=False), **card)
        heads[repo_id] = hub.add_commit(repo_id, build_tiny_repo(kind, seed=seed), **card)
    return heads


def write_tiny_convnext(directory: Path, seed: int = 0) -> Path:
    """The demo's tiny torchvision ConvNeXt (:func:`awb_dagster.instruments.convnet.tiny_convnext`,
    seeded random weights) as torchvision publishes weights: ``torch.save`` of the state dict, named
    ``tiny_convnext-<first 8 hex digits of its sha256>.pth`` (torch.hub's rule), in ``directory``."""
    import hashlib
    import io

    import torch

    from awb_dagster.instruments.convnet import tiny_convnext
    from awb_dagster.registry.torchvision_weights import DEMO_WEIGHT_STEMS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_convnext()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    stem = DEMO_WEIGHT_STEMS["awb_demo.TINY_CONVNEXT"]
    path = Path(directory) / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
