"""The instrument registry: roster data, pins, the admission gate and name resolution.

The roster (``roster.toml``) declares every instrument; the lock (``pins.lock.json``)
records its pins. An entry is *admitted* only when all six admission fields of the seed's
section 0 are present; otherwise it stays in *ideas* and cannot be materialized.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from awb_dagster.registry.lock import LockError, Pin, PinLock, active_pin

ROSTER_PATH = Path(__file__).with_name("roster.toml")
LOCK_PATH = Path(__file__).with_name("pins.lock.json")

ADMISSION_FIELDS = ("pin", "license", "outputs", "preprocessing", "failure_modes", "sealed_runs")
FLAGGED_LICENSES = frozenset({"other", "apple-amlr", "unknown", "varies"})
FLAGGED_LICENSE_PREFIXES = ("cc-by-nc",)

FAMILIES = (
    "clip", "siglip", "dinov2", "eva-clip", "aimv2", "biomedclip", "imagebind", "sam",
    "sam-hq", "mask2former", "u2net", "detr", "grounding-dino", "aesthetic", "memorability",
    "wikiart", "emotion", "places365", "tesseract", "trocr", "blip", "blip2", "florence2",
    "qwen2-vl", "convnet",
)  # fmt: skip
SOURCES = ("hf", "tesseract", "torchvision", "demo", "url")
OUTPUT_KINDS = (
    "vector", "logits", "masks", "class-map", "mask", "boxes+logits", "scalar", "text",
    "text+boxes",
)  # fmt: skip

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A weight file published at a plain URL: http(s), ending in the file's name.
_WEIGHT_URL_RE = re.compile(r"^https?://[^/\s]+/(?:[^\s?#]*/)?[\w.-]+$")

_REMEDIES = {
    "pin": "run `awb pin {id}`",
    "license": "record the declared license tag in roster.toml (`unknown` if none is declared)",
    "outputs": "declare output_kind (and expected_dim for vectors) in roster.toml",
    "preprocessing": "declare resize/crop/normalization and prompt templates in roster.toml",
    "failure_modes": "declare at least one known failure mode in roster.toml",
    "sealed_runs": "no instrument adapter runs family '{family}' as a sealed run yet; "
    "write one, then set sealed_runs = true",
}


class RegistryError(Exception):
    """The roster or lock is invalid, or a registry request cannot be served."""


class UnknownModelError(RegistryError, LookupError):
    """A name resolves to no instrument."""


class NotAdmittedError(RegistryError):
    """The instrument is still in `ideas`: some admission field is missing."""


class LicenseOptInError(RegistryError):
    """The instrument's license is flagged and was not opted into."""


def license_needs_opt_in(license: str | None) -> bool:
    """True for licenses that need an explicit opt-in (undeclared ones included)."""
    if not license:
        return True
    tag = license.lower()
    return tag in FLAGGED_LICENSES or tag.startswith(FLAGGED_LICENSE_PREFIXES)


@dataclass(frozen=True)
class Instrument:
    """One roster entry exactly as declared (see roster.toml for field meanings)."""

    id: str
    key: str
    family: str
    role: str
    section: str
    source: str
    pipeline_tag: str | None = None
    library: str | None = None
    license: str | None = None
    output_kind: str | None = None
    output_dtype: str | None = None
    expected_dim: int | None = None
    input_size: int | None = None
    dim_config_field: str | None = None
    size_config_field: str | None = None
    preprocessing: str | None = None
    failure_modes: tuple[str, ...] = ()
    notes: str = ""
    sealed_runs: bool = False
    trust_remote_code: bool = False  # honoured by loaders only together with a pinned sha
    weight_id: str | None = None
    library_version: str | None = None
    url: str | None = None  # source "url": where the weight file is published
    file_sha256: str | None = None  # source "url": sha256 of that file; its pins carry this sha
    aliases: tuple[str, ...] = ()
    demo: bool = False

    @property
    def license_flagged(self) -> bool:
        """Whether the declared license needs an explicit opt-in."""
        return license_needs_opt_in(self.license)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this instrument answers to: id, key, aliases."""
        return (self.id, self.key, *self.aliases)

    @property
    def weight_file(self) -> str | None:
        """The file name of a ``source = "url"`` weight file: the last segment of its URL."""
        return self.url.rsplit("/", 1)[-1] if self.url else None


@dataclass(frozen=True)
class DeadAlias:
    """A name that appears in the corpus but resolves to no model."""

    alias: str
    message: str


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
        """Flagged licenses among the declared one and the one captured by the active pin."""
        pin = self.active_pin
        licenses = [self.instrument.license or "unknown"]
        if pin is not None and pin.license.lower() != licenses[0].lower():
            licenses.append(pin.license)
        return tuple(lic for lic in licenses if license_needs_opt_in(lic))

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
        try:
            raw = tomllib.loads(roster_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RegistryError(f"{roster_path}: cannot read roster ({exc})") from exc
        instruments, dead_aliases = _parse_roster(raw, roster_path)
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
        entry (id, key or alias) or, for licenses, every flagged license string.
        """
        entry = self.get(name)
        inst = entry.instrument
        if entry.missing:
            steps = "; ".join(
                f"{field}: " + _REMEDIES[field].format(id=inst.id, family=inst.family)
                for field in entry.missing
            )
            raise NotAdmittedError(
                f"{inst.id} ({inst.key}) is in `ideas`, not admitted; "
                f"missing {', '.join(entry.missing)}. To admit it: {steps}"
            )
        opted = {item.lower() for item in license_opt_in}
        if opted & {n.lower() for n in inst.names}:
            return entry
        unaccepted = [lic for lic in entry.flagged_licenses if lic.lower() not in opted]
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


# --- roster parsing -----------------------------------------------------------------------

_STR, _INT, _BOOL, _STRS = "string", "positive integer", "boolean", "list of strings"
_FIELD_TYPES: dict[str, str] = {
    "id": _STR, "key": _STR, "family": _STR, "role": _STR, "section": _STR, "source": _STR,
    "pipeline_tag": _STR, "library": _STR, "license": _STR, "output_kind": _STR,
    "output_dtype": _STR, "expected_dim": _INT, "input_size": _INT,
    "dim_config_field": _STR, "size_config_field": _STR, "preprocessing": _STR,
    "failure_modes": _STRS, "notes": _STR, "sealed_runs": _BOOL, "trust_remote_code": _BOOL,
    "weight_id": _STR, "library_version": _STR, "aliases": _STRS, "demo": _BOOL,
    "url": _STR, "file_sha256": _STR,
}  # fmt: skip
_REQUIRED = ("id", "key", "family", "role", "section", "source")


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str) and bool(value.strip())
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind == _BOOL:
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def _parse_roster(
    raw: Mapping[str, Any], path: Path
) -> tuple[list[Instrument], list[DeadAlias]]:
    if unknown := sorted(raw.keys() - {"instrument", "dead_alias"}):
        raise RegistryError(
            f"{path}: unknown top-level table(s) {', '.join(unknown)}; "
            "expected [[instrument]] and [[dead_alias]]"
        )
    tables = raw.get("instrument", [])
    if not isinstance(tables, list) or not tables:
        raise RegistryError(f"{path}: no [[instrument]] entries")
    instruments = [_parse_instrument(t, i, path) for i, t in enumerate(tables)]
    dead_tables = raw.get("dead_alias", [])
    dead_aliases = [_parse_dead_alias(t, i, path) for i, t in enumerate(dead_tables)]
    _check_unique_names(instruments, dead_aliases, path)
    return instruments, dead_aliases


def _parse_instrument(table: Mapping[str, Any], index: int, path: Path) -> Instrument:
    label = repr(table["id"]) if isinstance(table.get("id"), str) else f"#{index}"

    def fail(field: str, problem: str) -> RegistryError:
        return RegistryError(f"{path}: instrument {label}, field '{field}': {problem}")

    for field in _REQUIRED:
        if field not in table:
            raise fail(field, "missing (required)")
    for field, value in table.items():
        if field not in _FIELD_TYPES:
            close = difflib.get_close_matches(field, _FIELD_TYPES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise fail(field, f"unknown field{hint}")
        if not _type_ok(value, _FIELD_TYPES[field]):
            raise fail(field, f"must be a non-empty {_FIELD_TYPES[field]}, got {value!r}")

    values = dict(table)
    if not _KEY_RE.match(values["key"]):
        raise fail("key", f"{values['key']!r} may only use [a-z0-9._-] (it is a partition key)")
    if values["family"] not in FAMILIES:
        raise fail("family", f"{values['family']!r} is not one of {', '.join(FAMILIES)}")
    if values["source"] not in SOURCES:
        raise fail("source", f"{values['source']!r} is not one of {', '.join(SOURCES)}")
    if "output_kind" in values and values["output_kind"] not in OUTPUT_KINDS:
        raise fail("output_kind", f"{values['output_kind']!r} is not one of {OUTPUT_KINDS}")
    if values["source"] in ("hf", "demo") and not _HF_ID_RE.match(values["id"]):
        raise fail("id", f"{values['id']!r} is not an 'owner/name' model id")
    if values.get("license", "").lower().startswith("license:"):
        raise fail("license", "write the tag without its 'license:' prefix")
    if values.get("demo", False) != (values["source"] == "demo"):
        raise fail("demo", "must be true exactly when source = \"demo\"")
    if values["source"] == "torchvision":
        for field in ("weight_id", "library_version"):
            if field not in values:
                raise fail(field, "required for torchvision weights (seed section 11)")
    for field in ("url", "file_sha256"):
        if (field in values) != (values["source"] == "url"):
            raise fail(field, "required exactly when source = \"url\" (a weight file pinned by its sha256)")
    if values["source"] == "url":
        if not _WEIGHT_URL_RE.match(values["url"]):
            raise fail("url", f"{values['url']!r} is not an http(s) URL ending in the weight file's name")
        if not _SHA256_RE.match(values["file_sha256"]):
            raise fail("file_sha256", f"{values['file_sha256']!r} is not a 64-hex lower-case sha256")
    for config_field, declared in (
        ("dim_config_field", "expected_dim"),
        ("size_config_field", "input_size"),
    ):
        if config_field in values and declared not in values:
            raise fail(config_field, f"names a config field but {declared} is not declared")

    values["failure_modes"] = tuple(values.get("failure_modes", ()))
    values["aliases"] = tuple(values.get("aliases", ()))
    return Instrument(**values)


def _parse_dead_alias(table: Any, index: int, path: Path) -> DeadAlias:
    if (
        not isinstance(table, dict)
        or table.keys() != {"alias", "message"}
        or not all(_type_ok(v, _STR) for v in table.values())
    ):
        raise RegistryError(
            f"{path}: dead_alias #{index} must have exactly the string fields 'alias', 'message'"
        )
    return DeadAlias(alias=table["alias"], message=table["message"])


def _check_unique_names(
    instruments: list[Instrument], dead_aliases: list[DeadAlias], path: Path
) -> None:
    owners: dict[str, str] = {}
    for inst in instruments:
        fields = [("id", inst.id), ("key", inst.key)] + [("aliases", a) for a in inst.aliases]
        for field, name in fields:
            other = owners.get(name.lower())
            if other is not None and not (other == inst.id and field == "key"):
                raise RegistryError(
                    f"{path}: instrument {inst.id!r}, field '{field}': "
                    f"{name!r} is already a name of {other!r}"
                )
            owners[name.lower()] = inst.id
    for dead in dead_aliases:
        if dead.alias.lower() in owners:
            owner = owners[dead.alias.lower()]
            raise RegistryError(f"{path}: dead_alias {dead.alias!r} is also a name of {owner!r}")
        owners[dead.alias.lower()] = f"dead alias {dead.alias}"


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
