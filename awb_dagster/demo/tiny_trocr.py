"""A tiny TrOCR checkpoint in the published layout of ``microsoft/trocr-base-printed``: a
``VisionEncoderDecoderModel`` (ViT encoder, ``TrOCRForCausalLM`` decoder) in
``model.safetensors`` + ``config.json`` + ``generation_config.json``, a ``TrOCRProcessor``
(``preprocessor_config.json``, a byte-level BPE tokenizer: ``vocab.json``, ``merges.txt``).
Random weights: its text carries no meaning; it exercises loading at a pin and line decoding."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # TrOCR's ids 0-3: bos, pad, eos, unk
IMAGE_SIDE = 32


def _byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE maps bytes to (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tiny_trocr_files(seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of a tiny TrOCR repo, deterministic for ``seed``."""
    import torch
    from transformers import (
        RobertaTokenizer, TrOCRConfig, TrOCRForCausalLM, TrOCRProcessor, ViTConfig, ViTImageProcessor, ViTModel,
        VisionEncoderDecoderModel,
    )  # fmt: skip

    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *_byte_alphabet()])}
    with tempfile.TemporaryDirectory(prefix="awb-tiny-trocr-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        image_processor = ViTImageProcessor(
            size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = ViTModel(ViTConfig(
                image_size=IMAGE_SIDE, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32,
            ))  # fmt: skip
            decoder = TrOCRForCausalLM(TrOCRConfig(
                vocab_size=len(vocab), d_model=16, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                max_position_embeddings=64, cross_attention_hidden_size=16, pad_token_id=1, bos_token_id=0,
                eos_token_id=2, decoder_start_token_id=2,
            ))  # fmt: skip
            model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
        model.config.decoder_start_token_id = 2
        model.config.pad_token_id = 1
        model.config.eos_token_id = 2
        model.generation_config.decoder_start_token_id = 2
        model.generation_config.pad_token_id = 1
        model.generation_config.eos_token_id = 2
        out = folder / "repo"
        model.save_pretrained(out, safe_serialization=True)
        TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}
