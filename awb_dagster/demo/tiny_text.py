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


# The tiny SigLIP's SentencePiece vocabulary is trained on these words (a few plate-caption words).
_SIGLIP_WORDS = (
    "a plate of the bird heron wading in water pair flight prey flowering plants ground nest eggs engraving"
).split()
SIGLIP_VOCAB_SIZE = 40  # below the tiny SigLIP text tower's 99 embeddings


def tiny_siglip_spiece() -> bytes:
    """A tiny SentencePiece unigram model in the ids of ``google/siglip-*``'s ``spiece.model``
    (0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``, no ``<s>``). Trained from an in-memory corpus, one thread:
    the same bytes every time (a file path or a thread race would change the commit sha)."""
    import io

    import sentencepiece as spm

    lines = [" ".join(_SIGLIP_WORDS[i:] + _SIGLIP_WORDS[:i]) for i in range(len(_SIGLIP_WORDS))]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=SIGLIP_VOCAB_SIZE, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        normalization_rule_name="identity", minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def save_tiny_siglip_tokenizer(folder: Path) -> None:
    """Write the tiny SigLIP tokenizer's files into ``folder``, as ``google/siglip-*`` ship them:
    transformers' SigLIP conversion (convert_siglip_to_hf.py) saves ``SiglipTokenizer`` over
    ``spiece.model`` with ``model_input_names=["input_ids"]`` (no attention mask: the original
    model attends to the padding too). Needs the sentencepiece package (a dependency)."""
    import tempfile

    from transformers import SiglipTokenizer

    with tempfile.TemporaryDirectory(prefix="awb-tiny-spiece-") as tmp:
        vocab = Path(tmp) / "spiece.model"
        vocab.write_bytes(tiny_siglip_spiece())
        SiglipTokenizer(str(vocab), model_input_names=["input_ids"], model_max_length=MAX_LENGTH).save_pretrained(str(folder))
