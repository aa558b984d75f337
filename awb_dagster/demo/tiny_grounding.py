"""A tiny GroundingDINO checkpoint in the published layout of ``IDEA-Research/grounding-dino-base``:
``GroundingDinoForObjectDetection`` (Swin backbone, BERT text tower) in ``model.safetensors`` +
``config.json``, the image processor's ``preprocessor_config.json`` and the BERT tokenizer's files
(``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json``), which ``AutoProcessor`` assembles
into a ``GroundingDinoProcessor``. The vocabulary is tiny: BERT's special tokens, the period and
the words of the registry's detection prompts. Random weights: its boxes carry no meaning."""

from __future__ import annotations

import tempfile
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BERT's ids 0, 100, 101, 102, 103 in order
WORDS = (".", "bird", "egg", "nest", "branch", "fish", "a", "the", "plant", "flower")


class GroundingRepoFiles:
    """Saves the image processor and the tokenizer as separate files, as the hub repo holds them
    (``processor.save_pretrained`` would nest both into one ``processor_config.json``), and the
    WordPiece ``vocab.txt`` the repo also ships (transformers 5 writes ``tokenizer.json`` only)."""

    def __init__(self, image_processor: object, tokenizer: object, vocab: list[str]):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.vocab = vocab

    def save_pretrained(self, directory: str) -> None:
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (Path(directory) / "vocab.txt").write_text("\n".join(self.vocab) + "\n", encoding="utf-8")


def tiny_grounding_dino() -> tuple[object, GroundingRepoFiles]:
    """The model and its repo files, from the current torch seed. Two decoder layers: with one,
    transformers' tied box heads (``bbox_embed.0`` -> the others) have nothing to tie to."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        SwinConfig,
    )

    vocab = [*SPECIAL_TOKENS, *WORDS]
    with tempfile.TemporaryDirectory(prefix="awb-tiny-grounding-vocab-") as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True)
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
        out_indices=[2, 3, 4],
    )  # fmt: skip
    text = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    # d_model 64: the input projections' GroupNorm has 32 groups and needs 2+ values per group on a 1x1 level
    # (the elongated awkward plate).
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=64, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32,
    )  # fmt: skip
    # grounding-dino-base's recipe (shortest edge 800, longest 1333, ImageNet statistics, padding), at 64/96 px.
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    image_processor.processor_class = "GroundingDinoProcessor"  # AutoProcessor pairs it with the tokenizer
    return GroundingDinoForObjectDetection(config), GroundingRepoFiles(image_processor, tokenizer, vocab)
