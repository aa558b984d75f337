"""Instrument adapters: load pinned weights, preprocess, run a batch. No Dagster here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from awb_dagster.registry.lock import Pin
from awb_dagster.registry.model import Instrument


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


def require_pin_of(instrument: Instrument, pin: Pin, error: type[Exception]) -> None:
    """Refuse to load ``instrument`` with a pin taken for another model."""
    if pin.model_id != instrument.id:
        raise error(f"pin {pin.key} is for {pin.model_id}, not {instrument.id}")


def hub_kwargs(instrument: Instrument, pin: Pin, *, cache_dir: Path | None, local_files_only: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments that load exactly the pinned weights: the locked sha (never
    a branch), the home's cache, and remote code only where the registry entry allows it."""
    return {
        "revision": pin.sha,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "local_files_only": local_files_only,
        "trust_remote_code": instrument.trust_remote_code,
    }
