"""A tiny Florence-2 checkpoint of the real native architecture, in the file layout of the converted
``florence-community/Florence-2-base`` / ``-large`` repos, for tests and the offline demo (random
weights: its text carries no meaning).

The converted repos (transformers' ``convert_florence2_original_pytorch_to_hf.py``, pushed with
``model.push_to_hub`` + ``processor.push_to_hub`` under transformers 4.56) carry ``config.json``,
``model.safetensors`` (float16), ``generation_config.json``, ``preprocessor_config.json``,
``processor_config.json`` and the BART tokenizer's ``vocab.json``, ``merges.txt``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``added_tokens.json``. The small files here are written by :mod:`awb_dagster.demo.florence_layout`,
whose serialization reproduces the real files byte for byte; only the sizes differ: a two-stage
DaViT (32x32 input -> 4x4 tokens + 1 pooled = 17 image tokens), a one-layer BART encoder-decoder,
and a byte-level vocabulary without merges in front of the same added tokens. ``tokenizer.json``
is transformers' own serialization of that tokenizer (the real one could not be read).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from awb_dagster.demo.florence_layout import (
    IMAGE_TOKEN,
    TASK_TOKENS,
    config_json,
    generation_config_json,
    preprocessor_config_json,
    processor_config_json,
    tokenizer_files,
)
from awb_dagster.demo.tiny_trocr import _byte_alphabet

FLORENCE_DEMO_REPO = "awb-demo/tiny-florence2"
IMAGE_SIZE = 32
IMAGE_TOKENS = (IMAGE_SIZE // 8) ** 2 + 1  # strides 4 * 2 -> 4x4 tokens, plus the pooled one
TINY_SIZES = {"d_model": 16, "layers": 1, "heads": 2, "ffn": 32, "max_positions": 128, "embed_dim": [16, 16],
              "vision_heads": [2, 2], "depths": [1, 1]}  # fmt: skip
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def _tokenizer(folder: Path):
    """BART's byte-level BPE (``<mask>`` after the base vocabulary) with Florence-2's task,
    ``<loc_N>`` and ``<image>`` tokens added after it, as the conversion left them."""
    from transformers import AddedToken, BartTokenizer

    vocab = {token: index for index, token in enumerate([*_SPECIALS, *_byte_alphabet(), "<mask>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in (*TASK_TOKENS, IMAGE_TOKEN)], special_tokens=True)
    return tokenizer, vocab["<mask>"]


def build_tiny_florence_files(seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of the tiny Florence-2 repo, deterministic for ``seed``, with the converted
    repos' file names and small files (:mod:`awb_dagster.demo.florence_layout`)."""
    import torch
    import transformers
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    with tempfile.TemporaryDirectory(prefix="awb-tiny-florence2-") as tmp:
        folder = Path(tmp)
        tokenizer, mask_id = _tokenizer(folder)
        vocab_size = -(-len(tokenizer) // 64) * 64  # the conversion pads the embeddings to a multiple of 64
        config = config_json(TINY_SIZES, vocab_size=vocab_size, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                             window_size=4, projection_dim=16, transformers_version=transformers.__version__)  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Florence2ForConditionalGeneration(Florence2Config.from_dict(json.loads(config)))
        out = folder / "repo"
        model.half().save_pretrained(out, safe_serialization=True)  # the repos ship float16 weights
        tokenizer.save_pretrained(out)
        for name in ("vocab.json", "merges.txt"):  # the slow tokenizer's files the repos also carry
            shutil.copy(folder / name, out / name)
        files = {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}
        return {
            **files,
            "config.json": config,
            "generation_config.json": generation_config_json(transformers.__version__),
            "preprocessor_config.json": preprocessor_config_json(IMAGE_SIZE, IMAGE_TOKENS),
            "processor_config.json": processor_config_json(),
            **tokenizer_files(mask_id),
        }


def publish_tiny_florence(hub, seed: int = 0, files: dict[str, bytes] | None = None) -> str:
    """Commit the tiny Florence-2 repo (``files``, or built for ``seed``) to the loopback ``hub``; its commit sha."""
    from awb_dagster.demo.checkpoints import DEMO_LICENSE

    return hub.add_commit(FLORENCE_DEMO_REPO, files or build_tiny_florence_files(seed), license=DEMO_LICENSE,
                          pipeline_tag="image-text-to-text", library_name="transformers")  # fmt: skip
