"""Pins and the pin lock file.

A pin records exactly which weights an instrument runs with: the HF commit sha (or, for
non-HF weights, the sha256 of the weight file) plus the metadata captured at pin time.
The lock is machine-written JSON with stable formatting so pin changes review well in
diffs. History is never deleted: a re-pin appends, a retired pin stays in the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from awb_dagster.atomic import write_json_atomic
from awb_dagster.registry.roster import INSTRUMENT_KEY

LOCK_VERSION = 1
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class LockError(ValueError):
    """The lock file is unreadable, malformed, or asked to do something it cannot."""


@dataclass(frozen=True)
class Pin:
    """One pinned revision of one instrument."""

    model_id: str
    sha: str  # 40-hex HF commit sha, or 64-hex sha256 of the weight file for non-HF weights
    revision_requested: str
    pipeline_tag: str | None
    library_name: str | None
    license: str  # as captured; "unknown" when the hub declares none
    gated: bool
    config: Mapping[str, Any] = field(hash=False)  # dotted config keys -> captured values
    output_dim: int | None
    input_size: int | None
    pinned_at: str  # ISO 8601, UTC
    endpoint: str
    instrument_key: str
    retired: bool = False
    # The files the pin carries (name -> sha256), fetched into the home's hub cache and verified
    # when the pin was taken; empty for pins taken before pins carried files, and for weight files.
    files: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _SHA_RE.match(self.sha):
            raise ValueError(
                f"sha {self.sha!r} is neither a 40-hex commit sha nor a 64-hex sha256"
            )
        if not INSTRUMENT_KEY.match(self.instrument_key):
            raise ValueError(f"instrument_key {self.instrument_key!r} is not a registry key")
        try:
            stamp = datetime.fromisoformat(self.pinned_at)
        except ValueError:
            raise ValueError(f"pinned_at {self.pinned_at!r} is not an ISO timestamp") from None
        offset = stamp.utcoffset()
        if offset is None or offset:
            raise ValueError(f"pinned_at {self.pinned_at!r} is not in UTC")
        for name in ("gated", "retired"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")
        for name in ("output_dim", "input_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer or null, got {value!r}")
        if not self.license:
            raise ValueError("license is empty; record 'unknown' when none is declared")
        for name, digest in self.files.items():
            if not isinstance(name, str) or not isinstance(digest, str) or not _SHA256_RE.match(digest):
                raise ValueError(f"files[{name!r}] must be the file's 64-hex sha256, got {digest!r}")

    @property
    def key(self) -> str:
        """The Dagster partition key of this pin, e.g. ``dinov2-large@0123456789``."""
        return f"{self.instrument_key}@{self.sha[:10]}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        data["config"] = dict(self.config)
        data["files"] = dict(self.files)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pin:
        """Build a pin from ``to_json`` output; raises ``ValueError`` naming what is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.name not in ("retired", "files")}
        if missing := sorted(required - data.keys()):
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        if unknown := sorted(data.keys() - names):
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        if not isinstance(data["config"], dict):
            raise ValueError("config must be an object")
        if not isinstance(data.get("files", {}), dict):
            raise ValueError("files must be an object of file name -> sha256")
        return cls(**data)


class PinLock:
    """All pins ever made, per canonical model id, oldest first."""

    def __init__(self, pins: Mapping[str, list[Pin]] | None = None) -> None:
        self._pins: dict[str, list[Pin]] = {k: list(v) for k, v in (pins or {}).items()}

    @classmethod
    def load(cls, path: Path | str) -> PinLock:
        """Read a lock file; a missing file is an empty lock, a corrupt one a ``LockError``."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LockError(
                f"{path}: cannot read pin lock ({exc}); restore it from version control"
            ) from exc
        if not isinstance(raw, dict) or raw.get("version") != LOCK_VERSION:
            raise LockError(
                f'{path}: not a version {LOCK_VERSION} pin lock (expected {{"version": '
                f'{LOCK_VERSION}, "pins": {{...}}}}); restore it from version control'
            )
        entries = raw.get("pins")
        if not isinstance(entries, dict):
            raise LockError(f"{path}: 'pins' must be an object of model id -> list of pins")
        pins: dict[str, list[Pin]] = {}
        for model_id, items in entries.items():
            if not isinstance(items, list):
                raise LockError(f"{path}: pins of {model_id!r} must be a list")
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise LockError(f"{path}: pin #{index} of {model_id!r} must be an object")
                try:
                    pin = Pin.from_json(item)
                except (TypeError, ValueError) as exc:
                    raise LockError(f"{path}: pin #{index} of {model_id!r}: {exc}") from exc
                if pin.model_id != model_id:
                    raise LockError(
                        f"{path}: pin #{index} listed under {model_id!r} is for {pin.model_id!r}"
                    )
                pins.setdefault(model_id, []).append(pin)
        return cls(pins)

    def to_json(self) -> dict[str, Any]:
        """The lock as a JSON-ready dict."""
        return {
            "version": LOCK_VERSION,
            "pins": {mid: [p.to_json() for p in pins] for mid, pins in self._pins.items()},
        }

    def save(self, path: Path | str) -> None:
        """Write atomically (see :func:`awb_dagster.atomic.write_json_atomic`)."""
        write_json_atomic(path, self.to_json())

    def add(self, pin: Pin) -> bool:
        """Append ``pin``; returns False (and changes nothing) if its sha is already active. An
        active pin of that sha taken before pins carried their files gets ``pin.files`` (True)."""
        active = self.active(pin.model_id)
        if active is not None and active.sha == pin.sha:
            if active.files or not pin.files:
                return False
            self._pins[pin.model_id] = [
                dataclasses.replace(p, files=dict(pin.files)) if p is active else p for p in self._pins[pin.model_id]
            ]
            return True
        self._pins.setdefault(pin.model_id, []).append(pin)
        return True

    def retire(self, model_id: str, sha: str) -> None:
        """Mark every pin of ``model_id`` with ``sha`` retired; the pins stay in the lock."""
        pins = self._pins.get(model_id, [])
        if not any(p.sha == sha for p in pins):
            raise LockError(f"no pin of {model_id!r} with sha {sha!r} to retire")
        self._pins[model_id] = [
            dataclasses.replace(p, retired=True) if p.sha == sha else p for p in pins
        ]

    def retire_key(self, pin_key: str) -> Pin:
        """Retire the pin whose partition key is ``pin_key``; returns it as it was before.

        A retired pin gets no further automation; its partitions, sealed runs and lineage stay.
        """
        pin = self.find_key(pin_key)
        if pin is None:
            known = ", ".join(p.key for p in self.all_pins()) or "none"
            raise LockError(f"no pin with key {pin_key!r} in the lock; pass one of: {known}")
        self.retire(pin.model_id, pin.sha)
        return pin

    def automated_keys(self) -> frozenset[str]:
        """Partition keys of the pins automation keeps materialized: every key whose newest pin
        is not retired (a superseded pin stays automated until it is retired)."""
        newest = {pin.key: pin for pin in self.all_pins()}
        return frozenset(key for key, pin in newest.items() if not pin.retired)

    def pins_for(self, model_id: str) -> tuple[Pin, ...]:
        """All pins of ``model_id``, oldest first, retired ones included."""
        return tuple(self._pins.get(model_id, ()))

    def active(self, model_id: str) -> Pin | None:
        """The newest pin of ``model_id`` that is not retired."""
        return active_pin(self.pins_for(model_id))

    def active_pins(self) -> tuple[Pin, ...]:
        """The active pin of every model that has one."""
        return tuple(pin for pin in map(self.active, self.model_ids()) if pin is not None)

    def model_ids(self) -> tuple[str, ...]:
        """Every model id with at least one pin."""
        return tuple(self._pins)

    def all_pins(self) -> tuple[Pin, ...]:
        """Every pin in the lock, grouped by model id, oldest first."""
        return tuple(p for pins in self._pins.values() for p in pins)

    def find_key(self, pin_key: str) -> Pin | None:
        """The pin whose partition key is ``pin_key`` (newest if a sha was re-pinned)."""
        matches = [p for p in self.all_pins() if p.key == pin_key]
        return matches[-1] if matches else None


def active_pin(pins: tuple[Pin, ...]) -> Pin | None:
    """The last non-retired pin of an oldest-first sequence."""
    return next((p for p in reversed(pins) if not p.retired), None)
