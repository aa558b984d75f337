"""The CLIP-fed aesthetic MLP (seed 7.1, christophschuhmann/improved-aesthetic-predictor).

Plain Python: no Dagster here. The published recipe (its ``simple_inference.py``): CLIP ViT-L/14
``encode_image`` -> L2-normalized -> ``MLP(768)``, a ``torch.nn.Sequential`` stored as ``layers``:
Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1),
Linear(64, 16), Linear(16, 1), saved as a ``torch.save`` state dict (``layers.0.weight`` ...). The
score is the regression onto mean AVA-style ratings (about 1..10) it was trained on.

It never recomputes CLIP: it reads the ``vector_l2`` of sealed ``clip_embeddings`` records of the
CLIP model it was trained on (:attr:`AestheticMlpSpec.clip_model`), so its records point at the
embedding records they scored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awb_dagster.instruments.common import InstrumentError, pin_provenance, pinned_file, require_pin_of
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "aesthetic-mlp-v1"


@dataclass(frozen=True)
class AestheticMlpSpec:
    """What one MLP consumes: the CLIP model whose normalized image embeddings it was trained on."""

    clip_model: str
    input_dim: int
    calibration: str
    # MD5 of the original file the pinned one must equal (a mirror's audit), None for none published.
    original_md5: str | None = None


# christophschuhmann/improved-aesthetic-predictor's sac+logos+ava1-l14-linearMSE.pth: the MD5 that
# third-party loaders check when they fetch the original from GitHub (pooch.retrieve "md5:...") and
# that EasyAnimate's mirror of it declares; camenduru's hub mirror loads only if its file has it.
ORIGINAL_SAC_LOGOS_AVA1_MD5 = "b1047fd767a00134b8fd6529bf19521a"

SPECS: dict[str, AestheticMlpSpec] = {
    "improved-aesthetic-predictor": AestheticMlpSpec(
        "openai/clip-vit-large-patch14", 768,
        "regression onto mean human ratings (AVA, LAION-Logos, SAC; about 1..10); uncalibrated on engravings",
        ORIGINAL_SAC_LOGOS_AVA1_MD5,
    ),
    "demo-tiny-aesthetic-mlp": AestheticMlpSpec("awb-demo/tiny-clip", 32, "uncalibrated: random weights"),
}  # fmt: skip


def aesthetic_mlp(input_dim: int) -> torch.nn.Module:
    """The published MLP (``layers`` as in improved-aesthetic-predictor's ``MLP``, no activations)."""
    from torch import nn

    return nn.ModuleDict({"layers": nn.Sequential(
        nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )})  # fmt: skip


class AestheticMlp:
    """A loaded aesthetic MLP at one pin; scores L2-normalized CLIP embeddings."""

    def __init__(self, instrument: Instrument, pin: Pin, *, cache_dir: Path | None = None, local_files_only: bool = False):
        require_pin_of(instrument, pin, InstrumentError)
        if instrument.key not in SPECS:
            raise InstrumentError(f"{instrument.id}: no aesthetic MLP adapter for key {instrument.key!r} (adapters: {', '.join(SPECS)})")
        if not instrument.weight_id:
            raise InstrumentError(f"{instrument.id}: roster.toml declares no weight_id (the .pth file in the repo to load)")
        self.instrument = instrument
        self.pin = pin
        self.spec = SPECS[instrument.key]
        # A few matrix-vector products per plate: the CPU, in float32, on every machine.
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.weight_file = pinned_file(
            instrument, pin, str(instrument.weight_id), cache_dir=cache_dir, local_files_only=local_files_only
        )
        self.weight_md5 = hashlib.md5(self.weight_file.read_bytes(), usedforsecurity=False).hexdigest()
        if self.spec.original_md5 is not None and self.weight_md5 != self.spec.original_md5:
            raise InstrumentError(
                f"{self.weight_file}: MD5 {self.weight_md5}, but the original {instrument.weight_id} published by "
                f"christophschuhmann/improved-aesthetic-predictor has MD5 {self.spec.original_md5}; pin {pin.key} of "
                f"{instrument.id} is not an exact mirror of it, so it does not run"
            )
        self.model = aesthetic_mlp(self.spec.input_dim)
        try:
            state = torch.load(self.weight_file, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, EOFError) as exc:
            raise InstrumentError(
                f"{self.weight_file}: not the improved-aesthetic-predictor MLP layout for {self.spec.input_dim}-d "
                f"CLIP embeddings ({exc}); pin {pin.key} of {instrument.id} holds another model"
            ) from exc
        self.model.eval()
        self.preprocess_tag = f"input=clip_embeddings:vector_l2;clip={self.spec.clip_model};adapter={ADAPTER_VERSION}"

    def tag_for(self, clip_pin: str, clip_tag: str) -> str:
        """The record's preprocess tag: the MLP's and the embedding's (which CLIP pin, which pixels)."""
        return f"{self.preprocess_tag};clip_pin={clip_pin};clip_tag=[{clip_tag}]"

    @torch.inference_mode()
    def scores(self, vectors_l2: np.ndarray) -> np.ndarray:
        """[B, input_dim] L2-normalized CLIP embeddings -> [B] float32 scores."""
        vectors = np.asarray(vectors_l2, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.spec.input_dim:
            raise InstrumentError(
                f"{self.instrument.id}: expects {self.spec.input_dim}-d embeddings of {self.spec.clip_model}, got "
                f"shape {vectors.shape}; the CLIP pin is not the model it was trained on"
            )
        return self.model["layers"](torch.from_numpy(vectors)).squeeze(1).numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "scalar",
            "output_dtype": "float32",
            "weight_file": self.instrument.weight_id,
            "weight_file_md5": self.weight_md5,
            "original_md5": self.spec.original_md5,  # the audit the file passed (None: no original to match)
            "consumes": {"asset": "clip_embeddings", "column": "vector_l2", "clip_model": self.spec.clip_model},
            "calibration": self.spec.calibration,
            "preprocess_tag": self.preprocess_tag,
        }
