"""The small files of the converted ``florence-community/Florence-2-base`` / ``-large`` repos,
serialized exactly as published (transformers 4.56's ``push_to_hub``: JSON, indent 2, a newline at
the end), for the tiny Florence-2 checkpoint (demo/tiny_florence.py) to carry the same files.

Verified: with the real values each function's bytes hash to the sha256 the repos publish
(:data:`PUBLISHED`, collected from public pins of the two revisions; tests/test_florence.py checks
it), so these are the files the real pins hold, not a guess at them. Not reproduced here:
``model.safetensors``, ``tokenizer.json``, ``vocab.json`` and ``merges.txt`` (BART's full BPE
vocabulary) and ``README.md``.
"""

from __future__ import annotations

import json
from typing import Any

# Repo -> revision and the sha256 of its files (model.safetensors and the small files; the processor
# and tokenizer files are byte-identical in the two repos).
_SHARED = {
    "added_tokens.json": "1d75deda84dfa81fb6c09301f3fed00f9695059568bbb1403a6bf299cd84fc37",
    "generation_config.json": "0251459c49cc358ac033b5d4b8569e61ac22bde5d76be404b97a44cfb33fb12e",
    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "preprocessor_config.json": "1396ec5a0a7adfe1c04fb777b09e8ba753be6dbb5868212ab3c3ef39d91fe031",
    "processor_config.json": "cd0e3bf41a39b1276503fbd273bc03b9afc70d7a15ea681a92a1b4b77f858ee6",
    "special_tokens_map.json": "72ff172dc769bc1551b1b4211628ce3271643bc60379e4da45d85a9be9332c39",
    "tokenizer.json": "3ad7001f773409abe6bba33eac92662611a73d72f459bda2f00d2a221dd31ce4",
    "tokenizer_config.json": "cb5f80bd9afa767bb1bb798ee5f0a79eae45239b8e72506166b4218175a16723",
    "vocab.json": "ed19656ea1707df69134c4af35c8ceda2cc9860bf2c3495026153a133670ab5e",
}
PUBLISHED: dict[str, dict[str, Any]] = {
    "florence-community/Florence-2-base": {
        "revision": "00921df66db728a9ceb750f5eca43e5c203a2051", "parameters": 231_443_968,
        "files": {**_SHARED, "config.json": "2a4dfe9885d183da121f239ada734bd700ee6908b650a7a25ab32eb104fe1d7a",
                  "model.safetensors": "62f3e696da74f8869a68ddb529a9b3e14eb25b21c592cb3dea6179bf944df6a0"},
    },
    "florence-community/Florence-2-large": {
        "revision": "4271c66b88cdbc05735372ec13b2360108de5317", "parameters": 776_505_344,
        "files": {**_SHARED, "config.json": "8412483f687f2f71587328a38c6fa70a68d9488f28e90607be3c182641f60f2c",
                  "model.safetensors": "7715423d6549bf1e71188bdd84f4ac960cc0597886af24a5ef7b66f128660685"},
    },
}  # fmt: skip
# The real sizes: base and large differ only in these (config.json).
REAL_SIZES: dict[str, dict[str, Any]] = {
    "base": {"d_model": 768, "layers": 6, "heads": 12, "ffn": 3072, "max_positions": 1024,
             "embed_dim": [128, 256, 512, 1024], "vision_heads": [4, 8, 16, 32], "depths": [1, 1, 9, 1]},
    "large": {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096, "max_positions": 4096,
              "embed_dim": [256, 512, 1024, 2048], "vision_heads": [8, 16, 32, 64], "depths": [1, 1, 9, 1]},
}  # fmt: skip
TASK_TOKENS = (
    "<od>", "</od>", "<ocr>", "</ocr>", *(f"<loc_{i}>" for i in range(1000)), "<cap>", "</cap>", "<ncap>", "</ncap>",
    "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
    "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
)  # fmt: skip
IMAGE_TOKEN = "<image>"
_BANNED_GROUNDING = (
    "it I me mine you your yours he him his she her hers they them their theirs one oneself we us our ours you your yours "
    "they them their theirs mine yours his hers its ours yours theirs myself yourself himself herself itself ourselves "
    "yourselves themselves this that these those who whom whose which what who whom whose which that all another any "
    "anybody anyone anything each everybody everyone everything few many nobody none one several some somebody someone "
    "something"
).split() + ["each other", "one another", "myself", "yourself", "himself", "herself", "itself", "ourselves", "yourselves",
             "themselves", "the image", "image", "images", "the", "a", "an", "a group", "other objects", "lots", "a set"]  # fmt: skip


def _dump(content: dict, *, sort_keys: bool = True) -> bytes:
    return (json.dumps(content, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode("utf-8")


def config_json(sizes: dict[str, Any], *, vocab_size: int = 51328, image_token_id: int = 51289, window_size: int = 12,
                projection_dim: int | None = None, patch: dict[str, list] | None = None,
                transformers_version: str = "4.56.1") -> bytes:  # fmt: skip
    """``config.json``: the native ``florence2`` config with the legacy keys the conversion kept."""
    n, d = len(sizes["embed_dim"]), sizes["d_model"]
    patch = patch or {"patch_padding": [3, 1, 1, 1], "patch_prenorm": [False, True, True, True],
                      "patch_size": [7, 3, 3, 3], "patch_stride": [4, 2, 2, 2]}  # fmt: skip
    text = {"activation_dropout": 0.1, "activation_function": "gelu", "add_bias_logits": False, "add_final_layer_norm": False,
            "attention_dropout": 0.1, "classif_dropout": 0.1, "classifier_dropout": 0.0, "d_model": d,
            "decoder_attention_heads": sizes["heads"], "decoder_ffn_dim": sizes["ffn"], "decoder_layerdrop": 0.0,
            "decoder_layers": sizes["layers"], "dropout": 0.1, "early_stopping": True, "encoder_attention_heads": sizes["heads"],
            "encoder_ffn_dim": sizes["ffn"], "encoder_layerdrop": 0.0, "encoder_layers": sizes["layers"], "forced_bos_token_id": 0,
            "gradient_checkpointing": False, "init_std": 0.02, "max_position_embeddings": sizes["max_positions"],
            "model_type": "bart", "no_repeat_ngram_size": 3, "normalize_before": False, "num_beams": 3,
            "num_hidden_layers": sizes["layers"], "scale_embedding": False, "use_cache": True, "vocab_size": vocab_size}  # fmt: skip
    vision = {"activation_function": "gelu", "depths": sizes["depths"], "dim_embed": sizes["embed_dim"], "drop_path_rate": 0.1,
              "embed_dim": sizes["embed_dim"], "enable_checkpoint": False, "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
              "image_pos_embed": {"max_pos_embeddings": 50, "type": "learned_abs_2d"}, "in_channels": 3, "initializer_range": 0.02,
              "max_pos_embeddings": 50, "max_position_embeddings": 50, "max_temporal_embeddings": 100, "mlp_ratio": 4.0,
              "model_type": "florence_vision", "num_groups": sizes["vision_heads"], "num_heads": sizes["vision_heads"],
              **{key: value[:n] for key, value in patch.items()}, "projection_dim": projection_dim or d, "qkv_bias": True,
              "visual_temporal_embedding": {"max_temporal_embeddings": 100, "type": "COSINE"}, "window_size": window_size}  # fmt: skip
    return _dump({"architectures": ["Florence2ForConditionalGeneration"], "dtype": "float16", "image_token_id": image_token_id,
                  "is_encoder_decoder": True, "model_type": "florence2", "text_config": text,
                  "transformers_version": transformers_version, "vision_config": vision})  # fmt: skip


def generation_config_json(transformers_version: str = "4.56.1") -> bytes:
    """``generation_config.json``: decoder start ``</s>``, forced ``<s>`` / ``</s>``, 3 beams, no repeated 3-grams."""
    return _dump({"_from_model_config": True, "bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": True,
                  "eos_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "no_repeat_ngram_size": 3,
                  "num_beams": 3, "pad_token_id": 1, "transformers_version": transformers_version})  # fmt: skip


def preprocessor_config_json(size: int = 768, image_seq_length: int = 577) -> bytes:
    """``preprocessor_config.json``: CLIPImageProcessor to a fixed square, bicubic, ImageNet mean/std, no
    crop, with the original repo's ``auto_map`` to its remote processor (which the native class never reads)."""
    square = {"height": size, "width": size}
    return _dump({"auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"}, "crop_size": square,
                  "do_center_crop": False, "do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
                  "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "CLIPImageProcessor",
                  "image_seq_length": image_seq_length, "image_std": [0.229, 0.224, 0.225], "processor_class": "Florence2Processor",
                  "resample": 3, "rescale_factor": 0.00392156862745098, "size": square})  # fmt: skip


def processor_config_json() -> bytes:
    """``processor_config.json``: ``Florence2Processor`` settings and the task parsers' config."""
    ocr = r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
    post = {"bboxes": {}, "description_with_bboxes": {}, "description_with_bboxes_or_polygons": {}, "description_with_polygons": {},
            "ocr": {"area_threshold": 0.0, "pattern": ocr}, "phrase_grounding": {"banned_grounding_tokens": _BANNED_GROUNDING},
            "polygons": {}, "pure_text": {}}  # fmt: skip
    return _dump({"num_additional_image_tokens": 0, "post_processor_config": post, "processor_class": "Florence2Processor"})


def tokenizer_files(mask_id: int = 50264) -> dict[str, bytes]:
    """``tokenizer_config.json``, ``special_tokens_map.json`` and ``added_tokens.json``: BART's special
    tokens (``<mask>`` at ``mask_id``), then the task and ``<loc_N>`` tokens, then ``<image>``."""
    added = {token: mask_id + 1 + index for index, token in enumerate((*TASK_TOKENS, IMAGE_TOKEN))}

    def entry(content: str, *, lstrip: bool = False, normalized: bool = False) -> dict[str, Any]:
        return {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": False, "single_word": False}

    decoder = {str(i): {**entry(token, normalized=True), "special": True} for i, token in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    decoder[str(mask_id)] = {**entry("<mask>", lstrip=True, normalized=True), "special": True}
    decoder.update({str(index): {**entry(token), "special": True} for token, index in added.items()})
    names = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>", "pad_token": "<pad>",
             "sep_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    config = {"add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": list(TASK_TOKENS),
              "bos_token": "<s>", "clean_up_tokenization_spaces": False, "cls_token": "<s>", "eos_token": "</s>",
              "errors": "replace", "extra_special_tokens": {"image_token": IMAGE_TOKEN}, "image_token": IMAGE_TOKEN,
              "mask_token": "<mask>", "model_max_length": 1024, "pad_token": "<pad>", "processor_class": "Florence2Processor",
              "sep_token": "</s>", "tokenizer_class": "BartTokenizer", "trim_offsets": True, "unk_token": "<unk>"}  # fmt: skip
    special = {"additional_special_tokens": [entry(token) for token in TASK_TOKENS],
               **{name: entry(token, lstrip=True, normalized=True) if name == "mask_token" else token for name, token in names.items()}}  # fmt: skip
    return {"tokenizer_config.json": _dump(config, sort_keys=False), "special_tokens_map.json": _dump(special),
            "added_tokens.json": _dump(added)}  # fmt: skip
