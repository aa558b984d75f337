"""A tiny tokenizer for the tiny CLIP's text tower, in the published layout of
``openai/clip-vit-*``: transformers' ``CLIPTokenizer`` (byte-level BPE with ``</w>`` word ends,
``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids, padding with ``<|endoftext|>``),
saved by ``save_pretrained`` (``tokenizer.json``, ``tokenizer_config.json``).

Its vocabulary is small enough for the tiny text tower's 99 embeddings: lower-case letters and
digits (word-inner and word-final), a few word-final punctuation marks and merges. As in the real
vocabulary, ``<|endoftext|>`` has the highest id, which is where CLIP's text tower pools."""

from __future__ import annotations

import string
from pathlib import Path

_MERGES = (("t", "h"), ("th", "e</w>"), ("o", "f</w>"))
MAX_LENGTH = 16  # the tiny text tower's max_position_embeddings (openai's CLIP: 77)


def tiny_clip_vocab() -> dict[str, int]:
    symbols = string.ascii_lowercase + string.digits
    tokens = [*symbols, *(c + "</w>" for c in symbols), *(p + "</w>" for p in ".,'-!?:;")]
    tokens += ["".join(merge) for merge in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def save_tiny_clip_tokenizer(folder: Path) -> None:
    """Write the tiny CLIP tokenizer's files into ``folder`` (beside the model's)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=tiny_clip_vocab(), merges=list(_MERGES), model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
