"""Image-classification probes published by the ``birder`` package (seed 7.5 Places365), at a pinned sha.

Plain Python: no Dagster here. birder's own hub recipe (``birder.common.fs_ops.load_pretrained_model``,
birder 0.8.4): the weights named ``W`` are the file ``W.pt`` at the root of the hub repo, a
``torch.save`` dict with ``state`` (the network's state dict), ``signature`` (input shape
``[0, C, H, W]``, output ``[0, classes]``), ``class_to_idx``, ``rgb_stats`` (mean/std), ``task``,
``birder_version`` and optionally ``config`` (overrides of the registered network config). It loads
with ``torch.load(weights_only=True)`` through ``fs_ops.load_model(device, network, tag=...)``, and the
name is birder's ``get_network_name``: ``<network>_<tag>``. Its inference transform is
``inference_preset(size, rgb_stats)``: resize to exactly ``H x W`` (bicubic, antialias), center crop
``H x W``, scale to [0, 1], normalize. Where birder's own registry lists the weights, the file's
sha256 must be the one it declares (birder's download check); the network and tag come from there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from awb_dagster.instruments.classifier import CALIBRATION_NOTE, UNCALIBRATED, label_set_sha256
from awb_dagster.instruments.common import InstrumentError, pin_provenance, pinned_file, require_pin_of, resolve_device
from awb_dagster.plates.imaging import COLOR_POLICY, decoder_tag, load_rgb
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

ADAPTER_VERSION = "birder-classifier-v1"


def split_weights_name(weights: str) -> tuple[str, str | None, str | None]:
    """birder weights name -> (network, tag, sha256 birder's registry declares for its .pt, or None).

    Registered weights take network and tag from birder's registry; others split at the longest
    registered network name followed by ``_`` (birder's ``<network>_<tag>`` naming)."""
    from birder.model_registry import registry

    if registry.pretrained_exists(weights):
        metadata = registry.get_pretrained_metadata(weights)
        return metadata["net"]["network"], metadata["net"].get("tag"), metadata["formats"].get("pt", {}).get("sha256")
    candidates = [name for name in registry.all_nets if weights.startswith(f"{name}_")]
    if not candidates:
        if weights in registry.all_nets:
            return weights, None, None
        raise InstrumentError(f"{weights!r}: not birder weights and no registered birder network prefixes it")
    network = max(candidates, key=len)
    return network, weights[len(network) + 1 :], None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BirderClassifier:
    """A loaded birder image classifier at one pin; the same interface as ``ImageClassifier``."""

    adapter_version = ADAPTER_VERSION

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
        from birder.common import fs_ops, lib
        from birder.data.transforms.classification import inference_preset

        require_pin_of(instrument, pin, InstrumentError)
        if not instrument.weight_id:
            raise InstrumentError(f"{instrument.id}: roster.toml declares no weight_id (the birder weights name)")
        self.instrument = instrument
        self.pin = pin
        self.device = resolve_device(device)
        self.dtype = torch.float32  # birder's inference preset is float32; a probe is cheap
        self.weights = str(instrument.weight_id)
        self.network, self.tag, declared_sha = split_weights_name(self.weights)
        self.weight_file = pinned_file(
            instrument, pin, f"{self.weights}.pt", cache_dir=cache_dir, local_files_only=local_files_only
        )
        self.file_sha256 = _sha256(self.weight_file)
        if declared_sha is not None and self.file_sha256 != declared_sha:
            raise InstrumentError(
                f"{self.weight_file}: sha256 {self.file_sha256}, but birder's registry declares {declared_sha} for "
                f"{self.weights}.pt; pin {pin.key} of {instrument.id} holds another file"
            )
        self.registry_sha256 = declared_sha
        try:
            self.model, info = fs_ops.load_model(self.device, self.network, path=self.weight_file, tag=self.tag, inference=True)
        except (RuntimeError, KeyError, OSError, EOFError, ValueError) as exc:
            raise InstrumentError(
                f"{self.weight_file}: not a birder {self.network} checkpoint ({type(exc).__name__}: {exc}); "
                f"pin {pin.key} of {instrument.id} holds another model"
            ) from exc
        self.model_class = type(self.model).__name__
        self.labels = lib.class_list_from_class_to_idx(info.class_to_idx)
        self.label_set_sha256 = label_set_sha256(self.labels)
        declared = instrument.expected_dim
        self.declared_labels = declared if declared is not None else len(self.labels)
        self.label_count_source = "roster expected_dim" if declared is not None else "checkpoint class_to_idx"
        if len(self.labels) != self.declared_labels or lib.get_num_labels_from_signature(info.signature) != len(self.labels):
            raise InstrumentError(
                f"{instrument.id}@{pin.sha[:10]}: the checkpoint has {len(self.labels)} classes (signature "
                f"{info.signature['outputs']}) but roster.toml declares expected_dim = {declared}"
            )
        self.size = tuple(lib.get_size_from_signature(info.signature))
        self.rgb_stats = {k: [float(x) for x in v] for k, v in info.rgb_stats.items()}
        self.transform = inference_preset(self.size, info.rgb_stats)
        height, width = self.size
        mean = ",".join(f"{x:g}" for x in self.rgb_stats["mean"])
        std = ",".join(f"{x:g}" for x in self.rgb_stats["std"])
        self.preprocess_tag = (
            f"dec={decoder_tag()};color={COLOR_POLICY};proc=birder.inference_preset;"
            f"resize=torchvision:bicubic:antialias:{height}x{width};crop=center:{height}x{width};rescale=0.00392157;"
            f"norm=mean({mean})std({std});adapter={ADAPTER_VERSION}"
        )

    def load_plate(self, path: Path, sha256: str, *, max_pixels: int) -> torch.Tensor:
        """Plate file -> the model input [3, H, W]. Thread-safe; runs in the decode workers."""
        return self.prepare(load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256))

    def prepare(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def logits(self, prepared: list[torch.Tensor]) -> np.ndarray:
        """Prepared plates -> logits [B, classes], float32 on the CPU."""
        batch = torch.stack(prepared).to(self.device, dtype=self.dtype)
        return self.model(batch).float().cpu().numpy()

    def calibration(self) -> dict[str, Any]:
        return {"status": UNCALIBRATED, "scale": "softmax probability over the checkpoint's classes", "note": CALIBRATION_NOTE}

    def describe(self) -> dict[str, Any]:
        """The instrument as the run manifest records it (seed 8.3)."""
        import birder

        return {
            **pin_provenance(self.instrument, self.pin),
            "intended_use": self.instrument.intended_use,
            "output_kind": "logits",
            "output_dtype": "float32",
            "library": "birder",
            "library_version": birder.__version__,
            "birder_network": self.network,
            "birder_tag": self.tag,
            "weight_file": f"{self.weights}.pt",
            "weight_file_sha256": self.file_sha256,
            "birder_registry_sha256": self.registry_sha256,
            "model_class": self.model_class,
            "labels": self.labels,
            "label_set_sha256": self.label_set_sha256,
            "label_count": len(self.labels),
            "label_count_source": self.label_count_source,
            "calibration": self.calibration(),
            "device": str(self.device),
            "dtype": "float32",
            "preprocess_tag": self.preprocess_tag,
            "preprocess": {"transform": "birder inference_preset", "size": list(self.size), "rgb_stats": self.rgb_stats},
        }
