"""The text tower of a pinned CLIP or SigLIP model (transformers, at the pin, safetensors only):
texts -> vectors in the same space as the family's sealed image embeddings, and the model's own
logit scale (and SigLIP's bias) for zero-shot probabilities.

Plain Python: no Dagster. Tokenization follows transformers' zero-shot image classification
pipeline: CLIP pads to the longest text of the batch (its text tower pools at the end-of-text
token); SigLIP pads every text to ``max_length`` (its tower pools the last position and was
trained on padded texts: the model card's "padding=max_length"). Both truncate at the tower's
position count. The convention is part of :attr:`TextTower.tag`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awb_dagster.instruments.common import (
    InstrumentError,
    hub_kwargs,
    pin_provenance,
    quiet_transformers,
    require_pin_of,
    resolve_device,
    resolve_dtype,
)
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

# Bump when the adapter changes what it computes.
ADAPTER_VERSION = "text-tower-v1"


@dataclass(frozen=True)
class TextFamilySpec:
    """How one family's text tower is loaded, tokenized and scored."""

    model_class: str  # the dual-encoder class: its text tower, projection and logit scale
    padding: str  # "longest" | "max_length" (the tokenizer's padding argument)
    scoring: str  # "softmax" over labels (CLIP) | "sigmoid" per label (SigLIP)


TEXT_FAMILIES: dict[str, TextFamilySpec] = {
    "clip": TextFamilySpec("CLIPModel", "longest", "softmax"),
    "siglip": TextFamilySpec("SiglipModel", "max_length", "sigmoid"),
}


# A pin's tokenizer files, any of which transformers reads (fast tokenizer, its config, BPE vocab, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")
PROBE_TEXT = "a photo of a bird"


class TextTower:
    """A loaded CLIP/SigLIP text tower at one pin."""

    def __init__(
        self,
        instrument: Instrument,
        pin: Pin,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        local_files_only: bool = False,
    ):
        if instrument.family not in TEXT_FAMILIES:
            raise InstrumentError(
                f"{instrument.id}: family {instrument.family!r} has no text tower "
                f"(text towers: {', '.join(sorted(TEXT_FAMILIES))})"
            )
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.spec = TEXT_FAMILIES[instrument.family]
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._hub = hub_kwargs(instrument, pin, cache_dir=cache_dir, local_files_only=local_files_only)
        self.tokenizer, self.model = self._load()
        positions = int(self.model.config.text_config.max_position_embeddings)
        declared = getattr(self.tokenizer, "model_max_length", None) or positions
        self.max_length = min(positions, int(declared))
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.detach().float().reshape(-1)[0]) if bias is not None else 0.0
        self.tag = (
            f"text={self.spec.model_class};tok={type(self.tokenizer).__name__};pad={self.spec.padding}:"
            f"{self.max_length};trunc={self.max_length};adapter={ADAPTER_VERSION}"
        )

    def _load(self) -> tuple[Any, torch.nn.Module]:
        transformers = quiet_transformers()
        model_id = self.instrument.id
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, **self._hub)
        except (ImportError, OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            hint = (
                " SigLIP's tokenizer (SiglipTokenizer, spiece.model) needs the sentencepiece package, which is "
                "not installed here."
                if self.instrument.family == "siglip" and importlib.util.find_spec("sentencepiece") is None
                else ""
            )
            raise InstrumentError(
                f"{model_id}@{self.pin.sha[:10]}: cannot load its tokenizer from the home's hub cache ({reason}).{hint} "
                f"A text tower needs the pin's tokenizer files: `awb pin {model_id}` fetches every file of the pin"
            ) from exc
        self._require_vocabulary(tokenizer)
        try:
            model = getattr(transformers, self.spec.model_class).from_pretrained(
                model_id, use_safetensors=True, dtype=self.dtype, **self._hub
            )
        except OSError as exc:
            raise InstrumentError(
                f"{model_id}@{self.pin.sha}: cannot load weights ({exc}). Weights load only at the locked sha "
                "through safetensors, from the home's hub cache (`awb pin` puts them there)."
            ) from exc
        return tokenizer, model.eval().to(self.device)

    def _require_vocabulary(self, tokenizer: Any) -> None:
        """transformers builds a CLIPTokenizer with an empty vocabulary from a config alone: a pin
        without tokenizer files must fail here, not encode every text as unknown tokens."""
        listed = set(self.pin.files)
        probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if (listed and not listed & set(TOKENIZER_FILES)) or all(i in tokenizer.all_special_ids for i in probe):
            raise InstrumentError(
                f"{self.instrument.id}@{self.pin.sha[:10]}: cannot load its tokenizer from the home's hub cache (the "
                f"pin carries none of {', '.join(TOKENIZER_FILES)}; {PROBE_TEXT!r} reads as {len(probe)} special or "
                "unknown tokens). A text tower needs the pin's tokenizer files: pin a revision that has them"
            )

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InstrumentError(f"{self.instrument.id}: texts must be non-empty strings, got {texts!r}")
        padding = True if self.spec.padding == "longest" else "max_length"
        return dict(
            self.tokenizer(texts, padding=padding, max_length=self.max_length, truncation=True, return_tensors="pt")
        )

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation, special tokens included, padding not."""
        ids = self.tokenizer(texts, max_length=self.max_length, truncation=True)["input_ids"]
        return [len(row) for row in ids]

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts -> raw text embeddings [N, dim] (float32, CPU), the family's image space."""
        inputs = {name: tensor.to(self.device) for name, tensor in self.tokenize(texts).items()}
        output = self.model.get_text_features(**inputs)
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        return features.float().cpu().numpy()

    def probabilities(self, cosines: np.ndarray) -> np.ndarray:
        """Cosines [plates, labels] -> the model's zero-shot probabilities: softmax over the labels
        of ``logit_scale * cos`` (CLIP), or ``sigmoid(logit_scale * cos + logit_bias)`` per label (SigLIP)."""
        logits = self.logit_scale * np.asarray(cosines, dtype=np.float64) + self.logit_bias
        if self.spec.scoring == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def describe(self) -> dict[str, Any]:
        """The instrument as a run manifest records it."""
        return {
            **pin_provenance(self.instrument, self.pin),
            "output_kind": "zero-shot probabilities",
            "model_class": self.spec.model_class,
            "tokenizer": type(self.tokenizer).__name__,
            "padding": self.spec.padding,
            "max_length": self.max_length,
            "scoring": self.spec.scoring,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "text_tag": self.tag,
        }
