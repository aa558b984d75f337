"""Tiny captioner checkpoints of the real architectures, in the file layout of the hub repos they
stand for, for tests and the offline demo (random weights: their text carries no meaning).

- ``blip``: ``Salesforce/blip-image-captioning-base``: ``BlipForConditionalGeneration`` in
  ``model.safetensors`` + ``config.json``, ``BlipProcessor`` (``BlipImageProcessor``
  ``preprocessor_config.json``; a BERT WordPiece tokenizer, ``vocab.txt`` + ``tokenizer.json``,
  whose last token is the ``[DEC]`` token the text decoder starts from).
- ``blip2-opt``: ``Salesforce/blip2-opt-2.7b``: ``Blip2ForConditionalGeneration`` (ViT, Q-Former,
  OPT) with ``Blip2Processor`` (``num_query_tokens`` in ``processor_config.json``, the ``<image>``
  token added to OPT's byte-level BPE tokenizer, ``vocab.json`` + ``merges.txt``).
- ``blip2-t5``: ``Salesforce/blip2-flan-t5-xl``: the same with a FLAN-T5 encoder-decoder and a T5
  Unigram tokenizer (``tokenizer.json``).
- ``qwen2-vl``: ``Qwen/Qwen2-VL-2B-Instruct``: ``Qwen2VLForConditionalGeneration`` with
  ``Qwen2VLProcessor`` (dynamic-resolution image processor, Qwen2 byte-level BPE tokenizer with
  the vision special tokens, the chat template in ``chat_template.json``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from awb_dagster.demo.tiny_trocr import _byte_alphabet

CaptionerKind = Literal["blip", "blip2-opt", "blip2-t5", "qwen2-vl"]

CAPTION_DEMO_REPOS: dict[str, CaptionerKind] = {
    "awb-demo/tiny-blip": "blip",
    "awb-demo/tiny-blip2-opt": "blip2-opt",
    "awb-demo/tiny-blip2-flan-t5": "blip2-t5",
    "awb-demo/tiny-qwen2-vl": "qwen2-vl",
}
CAPTION_PIPELINE_TAGS: dict[CaptionerKind, str] = {
    "blip": "image-to-text", "blip2-opt": "image-text-to-text", "blip2-t5": "image-text-to-text", "qwen2-vl": "image-text-to-text",
}  # fmt: skip

_WORDS = ("a", "an", "the", "of", "bird", "plate", "painting", "drawing", "on", "branch", "with", "and", "scientific", "illustration")
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL-Instruct's chat template: a system turn, then the user's images as vision tokens and text.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_vocab(specials: tuple[str, ...]) -> dict[str, int]:
    return {token: index for index, token in enumerate([*specials, *_byte_alphabet()])}


def _blip(folder: Path) -> tuple[object, object]:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *"abcdefghijklmnopqrstuvwxyz", "[DEC]"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    config = BlipConfig(
        vision_config={**_VISION, "image_size": 32, "patch_size": 8},
        text_config={**_VISION, "vocab_size": len(tokens), "max_position_embeddings": 64, "bos_token_id": len(tokens) - 1,
                     "pad_token_id": 0, "sep_token_id": 3, "eos_token_id": 3, "encoder_hidden_size": 16},
        projection_dim=16,
    )  # fmt: skip
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, resample=3)
    return BlipForConditionalGeneration(config), BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _blip2(folder: Path, language: str) -> tuple[object, object]:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, GPT2Tokenizer, T5Tokenizer

    if language == "opt":
        (folder / "vocab.json").write_text(json.dumps(_byte_vocab(("<s>", "<pad>", "</s>", "<unk>"))), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="</s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    else:
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *((f"▁{w}", -3.0) for w in _WORDS),
                  *((c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz")]  # fmt: skip
        tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, resample=3)
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)
    vocab = len(processor.tokenizer)
    small = {"vocab_size": vocab, "pad_token_id": processor.tokenizer.pad_token_id, "eos_token_id": processor.tokenizer.eos_token_id}
    if language == "opt":
        text = {"model_type": "opt", "hidden_size": 16, "ffn_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "word_embed_proj_dim": 16, "max_position_embeddings": 64, "bos_token_id": 2, **small}  # fmt: skip
    else:
        text = {"model_type": "t5", "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
                "num_heads": 2, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu", **small}  # fmt: skip
    config = Blip2Config(
        vision_config={**_VISION, "image_size": 32, "patch_size": 8},
        qformer_config={**_VISION, "encoder_hidden_size": 16, "vocab_size": 32, "max_position_embeddings": 32},
        text_config=text, num_query_tokens=4, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    return Blip2ForConditionalGeneration(config), processor


def _qwen2_vl(folder: Path) -> tuple[object, object]:
    from transformers import (
        Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )  # fmt: skip

    vocab = _byte_vocab(_QWEN_SPECIALS)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = Qwen2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=list(_QWEN_SPECIALS[1:]))  # fmt: skip
    # Qwen2-VL's image processor with the real patching (14 px patches merged 2x2) at tiny pixel bounds.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, image_mean=_CLIP_MEAN, image_std=_CLIP_STD)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=56 * 56, image_mean=_CLIP_MEAN, image_std=_CLIP_STD)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    ids = {token: vocab[token] for token in _QWEN_SPECIALS}
    config = Qwen2VLConfig(
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 16, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
                     "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(config), processor


_BUILDERS: dict[CaptionerKind, Callable[[Path], tuple[object, object]]] = {
    "blip": _blip,
    "blip2-opt": lambda folder: _blip2(folder, "opt"),
    "blip2-t5": lambda folder: _blip2(folder, "t5"),
    "qwen2-vl": _qwen2_vl,
}


def build_tiny_captioner_files(kind: CaptionerKind, seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of a tiny ``kind`` captioner repo, deterministic for ``seed``, under the
    file names the hub repos carry: ``preprocessor_config.json`` (the image processor), the
    tokenizer's own files, BLIP-2's ``processor_config.json`` (``num_query_tokens``) and
    Qwen2-VL's ``chat_template.json``, rather than the single ``processor_config.json`` that
    transformers 5's ``save_pretrained`` writes; both load into the same processor."""
    import shutil

    import torch

    with tempfile.TemporaryDirectory(prefix=f"awb-tiny-{kind}-") as tmp:
        folder = Path(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = _BUILDERS[kind](folder)
        out = folder / "repo"
        model.save_pretrained(out, safe_serialization=True)
        processor.image_processor.save_pretrained(out)
        processor.tokenizer.save_pretrained(out)
        for name in ("vocab.txt", "vocab.json", "merges.txt"):  # the slow tokenizers' files the repos also carry
            if (folder / name).exists():
                shutil.copy(folder / name, out / name)
        if kind.startswith("blip2"):
            processor_config = {"num_query_tokens": processor.num_query_tokens, "processor_class": "Blip2Processor"}
            (out / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n", encoding="utf-8")
        if kind == "qwen2-vl":
            (out / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}, indent=2) + "\n", encoding="utf-8")
        return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def publish_tiny_captioners(hub, only: list[str] | None = None, seed: int = 0) -> dict[str, str]:
    """Commit the tiny captioner repos (every one, or those in ``only``) to the loopback ``hub``;
    repo id -> commit sha."""
    from awb_dagster.demo.checkpoints import DEMO_LICENSE

    return {
        repo_id: hub.add_commit(repo_id, build_tiny_captioner_files(kind, seed), license=DEMO_LICENSE,
                                pipeline_tag=CAPTION_PIPELINE_TAGS[kind], library_name="transformers")  # fmt: skip
        for repo_id, kind in CAPTION_DEMO_REPOS.items()
        if only is None or repo_id in only
    }
