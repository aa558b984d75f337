"""What every instrument adapter shares: its error, the torch device and dtype it runs on, the
hub arguments that load exactly the pinned weights, its manifest identity, and the text of
processor settings in preprocess tags. No Dagster here."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from awb_dagster.registry.lock import Pin
from awb_dagster.registry.pin_files import pin_files_cached
from awb_dagster.registry.remote_code import remote_code_allowed
from awb_dagster.registry.roster import Instrument

# PIL resample codes as image processors store them, by name (the name goes into preprocess tags).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class InstrumentError(Exception):
    """An instrument cannot run: names the model, the pin and what to do."""


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``; CUDA must be present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InstrumentError(f"device {device!r} was requested but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` (bfloat16 on CUDA, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise InstrumentError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def require_pin_of(instrument: Instrument, pin: Pin, error: type[Exception]) -> None:
    """Refuse to load ``instrument`` with a pin taken for another model."""
    if pin.model_id != instrument.id:
        raise error(f"pin {pin.key} is for {pin.model_id}, not {instrument.id}")


def hub_kwargs(instrument: Instrument, pin: Pin, *, cache_dir: Path | None, local_files_only: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments that load exactly the pinned weights: the locked sha (never
    a branch), the home's cache, and remote code only where the registry entry allows it for this
    sha and the user opted in (otherwise a declared remote-code entry raises, naming the flag).

    A pin whose files are in ``cache_dir`` (``awb pin`` fetched and verified them there) loads
    from it alone, whatever ``local_files_only`` says: no network, no endpoint. A pin taken before
    pins carried their files downloads at the first load, unless ``local_files_only``."""
    return {
        "revision": pin.sha,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "local_files_only": local_files_only or pin_files_cached(cache_dir, pin.model_id, pin.sha, pin.files),
        "trust_remote_code": remote_code_allowed(instrument, pin),
    }


def pinned_file(
    instrument: Instrument, pin: Pin, filename: str, *, cache_dir: Path | str | None, local_files_only: bool
) -> Path:
    """One file of the pinned commit, from the home's cache when the pin carries its files (as
    :func:`hub_kwargs` loads), for adapters that read a weight or config file themselves. A file
    that cannot be had is an :class:`InstrumentError` naming the model, the sha and the file."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    offline = local_files_only or pin_files_cached(cache_dir, pin.model_id, pin.sha, pin.files)
    try:
        return Path(hf_hub_download(
            instrument.id, filename, revision=pin.sha, cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=offline,
        ))  # fmt: skip
    except (OSError, hf_errors.HfHubHTTPError) as exc:
        raise InstrumentError(
            f"{instrument.id}@{pin.sha}: cannot fetch {filename} ({exc}); check the weight_id in roster.toml, the "
            f"hub endpoint, or the home's hub cache when offline (`awb pin {instrument.id}` puts the pin's files there)"
        ) from exc


def quiet_transformers() -> ModuleType:
    """``transformers``, imported with its load reports (unused towers) and per-tensor progress
    bars silenced: noise in a run's log."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def weights_error(model_id: str, pin: Pin, exc: OSError) -> InstrumentError:
    """The error for pinned weights that cannot be loaded, with what to check."""
    return InstrumentError(
        f"{model_id}@{pin.sha}: cannot load weights ({exc}). Weights load only at the "
        "locked sha through safetensors, from the home's hub cache (<home>/hf-cache) where `awb pin` "
        f"puts them: `awb pin {model_id} --revision {pin.sha}` fetches them again (it needs the hub)."
    )


def load_pinned(
    model_id: str, pin: Pin, processor_class: str, model_class: str, *, dtype: Any, device: Any,
    hub: dict[str, Any], **model_kwargs: Any,
) -> tuple[Any, Any]:
    """A processor and a model of transformers' ``processor_class`` / ``model_class`` at the pin
    (``hub``: :func:`hub_kwargs`), weights through safetensors only, the model in eval mode on
    ``device``; a load failure is :func:`weights_error`."""
    transformers = quiet_transformers()
    try:
        processor = getattr(transformers, processor_class).from_pretrained(model_id, **hub)
        model = getattr(transformers, model_class).from_pretrained(
            model_id, use_safetensors=True, dtype=dtype, **hub, **model_kwargs
        )
    except OSError as exc:
        raise weights_error(model_id, pin, exc) from exc
    return processor, model.eval().to(device)


def pin_provenance(instrument: Instrument, pin: Pin) -> dict[str, Any]:
    """The identity part of an instrument's manifest entry: which model, which weights,
    under which license, with its declared failure modes."""
    return {
        "model_id": instrument.id,
        "instrument_key": instrument.key,
        "family": instrument.family,
        "pin_key": pin.key,
        "sha": pin.sha,
        "pin": pin.to_json(),
        "license": instrument.license,  # as the registry declares it, never assumed
        "license_captured": pin.license,  # what the hub said when the pin was taken
        "failure_modes": list(instrument.failure_modes),
        "demo": instrument.demo,
    }


def size_text(size: dict[str, int] | None) -> str:
    """A processor size dict in a tag: ``k=v`` pairs sorted by key, or ``none``."""
    if not size:
        return "none"
    return ",".join(f"{k}={v}" for k, v in sorted(size.items()))


def norm_text(spec: dict[str, Any]) -> str:
    """A processor's normalization in a tag: ``mean(...)std(...)``, or ``none``."""
    if not spec["do_normalize"]:
        return "none"
    return (
        "mean(" + ",".join(f"{x:g}" for x in spec["image_mean"]) + ")"
        "std(" + ",".join(f"{x:g}" for x in spec["image_std"]) + ")"
    )
