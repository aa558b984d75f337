"""Instrument adapters: load pinned weights, preprocess, run a batch. No Dagster here."""

from __future__ import annotations

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
