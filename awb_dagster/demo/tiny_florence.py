"""A tiny Florence-2 checkpoint of the real native architecture, in the file layout of the converted
``florence-community/Florence-2-base`` / ``-large`` repos, for tests and the offline demo (random
weights: its text carries no meaning).

The converted repos (transformers' ``convert_florence2_original_pytorch_to_hf.py``, pushed with
``model.push_to_hub`` + ``processor.push_to_hub`` under transformers 4.56) carry:

- ``config.json`` (``model_type: florence2``: a ``florence_vision`` DaViT config and a ``bart``
  text config), ``model.safetensors`` and ``generation_config.json`` (decoder start ``</s>``,
  forced ``<s>`` / ``</s>``, ``num_beams: 3``, ``no_repeat_ngram_size: 3``);
- ``preprocessor_config.json``: a ``CLIPImageProcessor`` (768x768 bicubic, ImageNet mean/std, no
  center crop) with ``image_seq_length`` (577 there: 24x24 DaViT tokens plus one pooled token);
- ``processor_config.json``: ``Florence2Processor`` with ``num_additional_image_tokens`` and the
  ``post_processor_config`` the task parsers need;
- the BART byte-level BPE tokenizer (``vocab.json``, ``merges.txt``, ``tokenizer.json``,
  ``tokenizer_config.json`` with ``extra_special_tokens: {"image_token": "<image>"}``,
  ``special_tokens_map.json``, ``added_tokens.json``) with Florence's added task and ``<loc_N>`` tokens.

Here: a two-stage DaViT (32x32 input -> 4x4 tokens + 1 pooled = 17 image tokens) and a one-layer
BART encoder-decoder, a byte-level vocabulary without merges plus the same added tokens.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from awb_dagster.demo.tiny_trocr import _byte_alphabet

FLORENCE_DEMO_REPO = "awb-demo/tiny-florence2"
IMAGE_SIZE = 32
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# Florence-2's added tokens, in the converted tokenizer's order (ids after BART's <mask>).
_TASK_TOKENS = (
    "<od>", "</od>", "<ocr>", "</ocr>", *(f"<loc_{i}>" for i in range(1000)), "<cap>", "</cap>", "<ncap>", "</ncap>",
    "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
    "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
)  # fmt: skip
IMAGE_TOKEN = "<image>"
# The converted repos' processor_config.json post_processor_config (banned grounding tokens shortened).
POST_PROCESSOR_CONFIG = {
    "bboxes": {}, "description_with_bboxes": {}, "description_with_bboxes_or_polygons": {}, "description_with_polygons": {},
    "ocr": {"area_threshold": 0.0, "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"},
    "phrase_grounding": {"banned_grounding_tokens": ["it", "the image", "image", "the", "a", "an"]},
    "polygons": {}, "pure_text": {},
}  # fmt: skip


def _tokenizer(folder: Path):
    from transformers import AddedToken, BartTokenizer

    vocab = {token: index for index, token in enumerate([*_SPECIALS, *_byte_alphabet(), "<mask>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in _TASK_TOKENS], special_tokens=True)
    return tokenizer


def _build(folder: Path) -> tuple[object, object]:
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tokenizer = _tokenizer(folder)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    image_processor = CLIPImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False, resample=3, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
    )  # fmt: skip
    image_processor.image_seq_length = (IMAGE_SIZE // 8) ** 2 + 1  # strides 4 * 2 -> 4x4 tokens, plus the pooled one
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer, post_processor_config=POST_PROCESSOR_CONFIG)
    vocab_size = -(-len(tokenizer) // 64) * 64  # the converted repos pad the embeddings to a multiple of 64
    config = Florence2Config(
        vision_config={"depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1],
                       "patch_prenorm": [False, True], "embed_dim": [16, 16], "num_heads": [2, 2], "num_groups": [2, 2],
                       "window_size": 4, "projection_dim": 16},
        text_config={"model_type": "bart", "vocab_size": vocab_size, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                     "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
                     "max_position_embeddings": 128, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
                     "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2},
        image_token_id=image_token_id,
    )  # fmt: skip
    model = Florence2ForConditionalGeneration(config)
    generation = model.generation_config  # the converted repos' generation_config.json
    for name, value in {"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "forced_bos_token_id": 0,
                        "forced_eos_token_id": 2, "pad_token_id": 1, "num_beams": 3, "no_repeat_ngram_size": 3,
                        "early_stopping": True}.items():  # fmt: skip
        setattr(generation, name, value)
    return model, processor


def _tokenizer_files_4_56(tokenizer) -> dict[str, dict]:
    """``tokenizer_config.json``, ``special_tokens_map.json`` and ``added_tokens.json`` in the shape
    transformers 4.56 wrote them for the converted repos (``added_tokens_decoder``, the task tokens
    as ``additional_special_tokens``, ``extra_special_tokens: {"image_token": "<image>"}``,
    ``tokenizer_class: BartTokenizer``), where transformers 5 writes a shorter config."""

    def entry(content: str, **overrides: bool) -> dict:
        return {"content": content, "lstrip": False, "normalized": content in _SPECIALS or content == "<mask>",
                "rstrip": False, "single_word": False, **overrides}  # fmt: skip

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (*_SPECIALS, "<mask>", *_TASK_TOKENS, IMAGE_TOKEN)}
    decoder = {str(index): {**entry(token, lstrip=token == "<mask>"), "special": True} for token, index in ids.items()}
    names = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>", "pad_token": "<pad>",
             "sep_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    config = {
        "add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": list(_TASK_TOKENS),
        **names, "clean_up_tokenization_spaces": False, "errors": "replace", "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "image_token": IMAGE_TOKEN, "model_max_length": 1024, "processor_class": "Florence2Processor",
        "tokenizer_class": "BartTokenizer", "trim_offsets": True,
    }  # fmt: skip
    special_map = {"additional_special_tokens": [entry(token) for token in _TASK_TOKENS],
                   **{name: entry(token, lstrip=token == "<mask>") for name, token in names.items()}}  # fmt: skip
    added = {token: ids[token] for token in sorted((*_TASK_TOKENS, IMAGE_TOKEN))}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special_map, "added_tokens.json": added}


def build_tiny_florence_files(seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of the tiny Florence-2 repo, deterministic for ``seed``, under the converted
    repos' file names: the image processor in ``preprocessor_config.json`` and the processor's own
    settings in ``processor_config.json`` (as transformers 4.56's ``push_to_hub`` wrote them), rather
    than the single ``processor_config.json`` transformers 5 writes; both load into the same processor."""
    import torch

    with tempfile.TemporaryDirectory(prefix="awb-tiny-florence2-") as tmp:
        folder = Path(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = _build(folder)
        out = folder / "repo"
        model.save_pretrained(out, safe_serialization=True)
        processor.image_processor.save_pretrained(out)
        processor.tokenizer.save_pretrained(out)
        for name in ("vocab.json", "merges.txt"):  # the slow tokenizer's files the repos also carry
            shutil.copy(folder / name, out / name)
        for name, content in _tokenizer_files_4_56(processor.tokenizer).items():
            (out / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        processor_config = {"num_additional_image_tokens": 0, "post_processor_config": POST_PROCESSOR_CONFIG,
                            "processor_class": "Florence2Processor"}  # fmt: skip
        (out / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n", encoding="utf-8")
        return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def publish_tiny_florence(hub, seed: int = 0) -> str:
    """Commit the tiny Florence-2 repo to the loopback ``hub``; its commit sha."""
    from awb_dagster.demo.checkpoints import DEMO_LICENSE

    return hub.add_commit(FLORENCE_DEMO_REPO, build_tiny_florence_files(seed), license=DEMO_LICENSE,
                          pipeline_tag="image-text-to-text", library_name="transformers")  # fmt: skip
