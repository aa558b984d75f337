"""The instrument registry: the roster's instruments with their pins, the admission gate and
name resolution.

The roster (``roster.toml``, :mod:`awb_dagster.registry.roster`) declares every instrument; the
lock (``pins.lock.json``) records its pins. An entry is *admitted* only when all six admission
fields of the seed's section 0 are present; otherwise it stays in *ideas* and cannot be
materialized.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from awb_dagster.registry.licenses import license_parts, restrictive_parts
from awb_dagster.registry.lock import LockError, Pin, PinLock, active_pin
from awb_dagster.registry.remote_code import remote_code_allowed
from awb_dagster.registry.roster import (
    FAMILIES,
    ROSTER_PATH,
    DeadAlias,
    Instrument,
    RegistryError,
    load_roster,
)

LOCK_PATH = Path(__file__).with_name("pins.lock.json")

ADMISSION_FIELDS = ("pin", "license", "outputs", "preprocessing", "failure_modes", "sealed_runs")
_REMEDIES = {
    "pin": "run `awb pin {id}`",
    "license": "record the declared license tag in roster.toml (`unknown` if none is declared)",
    "outputs": "declare output_kind (and expected_dim for vectors) in roster.toml",
    "preprocessing": "declare resize/crop/normalization and prompt templates in roster.toml",
    "failure_modes": "declare at least one known failure mode in roster.toml",
    "sealed_runs": "no instrument adapter runs family '{family}' as a sealed run yet; "
    "write one, then set sealed_runs = true",
}
# sealed_runs of a row whose published layout is the repo's own Python: the family may well run in
# another layout, so the generic remedy would mislead.
_REMOTE_CODE_REMEDY = (
    "this repo's layout loads only through its own Python (trust_remote_code), which no adapter here runs "
    "as a sealed run; its roster notes name what would admit it (e.g. a native-layout row)"
)


class UnknownModelError(RegistryError, LookupError):
    """A name resolves to no instrument."""


class NotAdmittedError(RegistryError):
    """The instrument is still in `ideas`: some admission field is missing."""


class LicenseOptInError(RegistryError):
    """The instrument's license is flagged and was not opted into."""


@dataclass(frozen=True)
class RegistryEntry:
    """An instrument together with its pin history (oldest first)."""

    instrument: Instrument
    pins: tuple[Pin, ...] = ()

    @property
    def active_pin(self) -> Pin | None:
        """The newest pin that is not retired."""
        return active_pin(self.pins)

    @property
    def missing(self) -> tuple[str, ...]:
        """The admission fields this entry lacks, in ``ADMISSION_FIELDS`` order."""
        inst = self.instrument
        absent = {
            "pin": self.active_pin is None,
            "license": not inst.license,
            "outputs": not inst.output_kind
            or (inst.output_kind == "vector" and inst.expected_dim is None),
            "preprocessing": not inst.preprocessing,
            "failure_modes": not inst.failure_modes,
            "sealed_runs": not inst.sealed_runs,
        }
        return tuple(name for name in ADMISSION_FIELDS if absent[name])

    @property
    def status(self) -> Literal["admitted", "ideas"]:
        """``admitted`` when no admission field is missing, else ``ideas``."""
        return "ideas" if self.missing else "admitted"

    @property
    def flagged_licenses(self) -> tuple[str, ...]:
        """The license parts needing an opt-in, from the declared license and the one captured by
        the active pin, each part checked on its own (a list with one restrictive part is
        restrictive), normalized, without repeats."""
        pin = self.active_pin
        declared = [self.instrument.license, *([pin.license] if pin is not None else [])]
        return tuple(dict.fromkeys(part for lic in declared for part in restrictive_parts(lic)))

    @property
    def license_flagged(self) -> bool:
        """Whether running this entry needs an opt-in (flagged license or gated pin)."""
        pin = self.active_pin
        return bool(self.flagged_licenses) or (pin is not None and pin.gated)


class Registry:
    """The loaded, validated roster with its pins. Build it with ``Registry.load``."""

    def __init__(
        self,
        entries: Iterable[RegistryEntry],
        dead_aliases: Iterable[DeadAlias] = (),
        *,
        roster_path: Path = ROSTER_PATH,
        lock_path: Path = LOCK_PATH,
        lock: PinLock | None = None,
    ) -> None:
        self._entries = list(entries)
        self.dead_aliases = tuple(dead_aliases)
        self.roster_path = roster_path
        self.lock_path = lock_path
        self.lock = lock if lock is not None else PinLock()
        self._by_name = {
            name.lower(): entry for entry in self._entries for name in entry.instrument.names
        }
        self._dead = {dead.alias.lower(): dead for dead in self.dead_aliases}

    @classmethod
    def load(cls, lock_path: Path | None = None, roster_path: Path | None = None) -> Registry:
        """Read and validate the roster and lock; any invalid entry raises ``RegistryError``."""
        roster_path = Path(roster_path or ROSTER_PATH)
        lock_path = Path(lock_path or LOCK_PATH)
        instruments, dead_aliases = load_roster(roster_path)
        try:
            lock = PinLock.load(lock_path)
        except LockError as exc:
            raise RegistryError(str(exc)) from exc
        entries = _attach_pins(instruments, lock, lock_path)
        return cls(
            entries, dead_aliases, roster_path=roster_path, lock_path=lock_path, lock=lock
        )

    @property
    def entries(self) -> list[RegistryEntry]:
        """Every entry, in roster order."""
        return list(self._entries)

    def get(self, name: str) -> RegistryEntry:
        """Resolve a canonical id, key or alias (case-insensitive) to its entry."""
        needle = name.strip().lower()
        if needle in self._by_name:
            return self._by_name[needle]
        if needle in self._dead:
            dead = self._dead[needle]
            raise UnknownModelError(f"{dead.alias!r} names no model: {dead.message}")
        matches = difflib.get_close_matches(needle, self._by_name, n=5, cutoff=0.6)
        suggestions = list(dict.fromkeys(self._by_name[m].instrument.id for m in matches))[:3]
        hint = (
            "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
            if suggestions
            else f"the roster is {self.roster_path}"
        )
        raise UnknownModelError(f"no such model {name!r}; {hint}")

    def family(self, name: str) -> list[RegistryEntry]:
        """Every entry of one family, in roster order."""
        if name not in FAMILIES:
            raise UnknownModelError(f"no such family {name!r}; families: {', '.join(FAMILIES)}")
        return [e for e in self._entries if e.instrument.family == name]

    def require_admitted(
        self, name: str, *, license_opt_in: Iterable[str] = ()
    ) -> RegistryEntry:
        """The entry for ``name`` if it may run; otherwise say what is missing and how to fix it.

        A flagged license (or a gated pin) passes only when ``license_opt_in`` names the
        entry (id, key or alias) or, for licenses, every flagged license string. An entry whose
        repo ships code passes only at its audited sha with the user's opt-in
        (:func:`awb_dagster.registry.remote_code.remote_code_allowed`).
        """
        entry = self.get(name)
        inst = entry.instrument
        if entry.missing:
            remedies = {**_REMEDIES, **({"sealed_runs": _REMOTE_CODE_REMEDY} if inst.trust_remote_code else {})}
            steps = "; ".join(
                f"{field}: " + remedies[field].format(id=inst.id, family=inst.family)
                for field in entry.missing
            )
            raise NotAdmittedError(
                f"{inst.id} ({inst.key}) is in `ideas`, not admitted; "
                f"missing {', '.join(entry.missing)}. To admit it: {steps}"
            )
        remote_code_allowed(inst, entry.active_pin)
        opted = {item.strip().lower() for item in license_opt_in}
        if opted & {n.lower() for n in inst.names}:
            return entry
        opted_licenses = {part for item in license_opt_in for part in license_parts(item)}
        unaccepted = [lic for lic in entry.flagged_licenses if lic not in opted_licenses]
        gated = entry.active_pin is not None and entry.active_pin.gated
        reasons = [f"license {lic!r}" for lic in unaccepted]
        if gated:
            reasons.append("gated on the hub")
        if reasons:
            by_license = (
                f' (or `["{unaccepted[0]}"]` to accept every model under that license)'
                if unaccepted and not gated
                else ""
            )
            raise LicenseOptInError(
                f"{inst.id} ({inst.key}) needs an explicit opt-in: {', '.join(reasons)}. "
                f'After checking its terms, add config `license_opt_in: ["{inst.key}"]`'
                + by_license
            )
        return entry


def _attach_pins(
    instruments: list[Instrument], lock: PinLock, lock_path: Path
) -> list[RegistryEntry]:
    by_id = {inst.id: inst for inst in instruments}
    if strays := [mid for mid in lock.model_ids() if mid not in by_id]:
        raise RegistryError(
            f"{lock_path}: pins for {', '.join(map(repr, strays))}, which the roster does not "
            "declare; restore the roster entry (pins are history and are never dropped)"
        )
    entries = []
    for inst in instruments:
        pins = lock.pins_for(inst.id)
        for pin in pins:
            if pin.instrument_key != inst.key:
                raise RegistryError(
                    f"{lock_path}: pin {pin.sha} of {inst.id!r} has instrument_key "
                    f"{pin.instrument_key!r} but the roster key is {inst.key!r}; "
                    "roster keys must stay stable"
                )
        entry = RegistryEntry(inst, pins)
        current = entry.active_pin
        if (
            current is not None
            and current.output_dim is not None
            and inst.expected_dim is not None
            and current.output_dim != inst.expected_dim
        ):
            raise RegistryError(
                f"{lock_path}: active pin {current.key} of {inst.id!r} has output_dim "
                f"{current.output_dim} but the roster declares expected_dim {inst.expected_dim}; "
                "fix the roster or retire the pin"
            )
        entries.append(entry)
    return entries
