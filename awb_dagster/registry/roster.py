"""The roster (``roster.toml``): every instrument as declared, validated when it is read.

An invalid entry fails with the roster file, the entry and the field, and what is wrong with it.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awb_dagster.registry.licenses import license_needs_opt_in

ROSTER_PATH = Path(__file__).with_name("roster.toml")

FAMILIES = (
    "clip", "siglip", "dinov2", "eva-clip", "aimv2", "biomedclip", "imagebind", "sam",
    "sam-hq", "mask2former", "u2net", "detr", "grounding-dino", "aesthetic", "aesthetic-image", "memorability",
    "wikiart", "emotion", "places365", "tesseract", "trocr", "blip", "blip2", "florence2",
    "qwen2-vl", "convnet",
)  # fmt: skip
SOURCES = ("hf", "tesseract", "torchvision", "demo", "url")
OUTPUT_KINDS = (
    "vector", "logits", "masks", "class-map", "mask", "boxes+logits", "scalar", "text",
    "text+boxes",
)  # fmt: skip

# An instrument key names the instrument in partition keys and pin keys.
INSTRUMENT_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# A weight file published at a plain URL: http(s), ending in the file's name.
_WEIGHT_URL_RE = re.compile(r"^https?://[^/\s]+/(?:[^\s?#]*/)?[\w.-]+$")


class RegistryError(Exception):
    """The roster or lock is invalid, or a registry request cannot be served."""


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
    intended_use: str | None = None  # what the instrument is for, and what its outputs must not be read as
    notes: str = ""
    sealed_runs: bool = False
    trust_remote_code: bool = False  # honoured by loaders only together with a pinned sha
    remote_code_sha: str | None = None  # the commit whose repo code was audited (registry.remote_code)
    weight_id: str | None = None
    library_version: str | None = None
    url: str | None = None  # source "url": where the weight file is published
    file_sha256: str | None = None  # source "url": sha256 of that file; its pins carry this sha
    aliases: tuple[str, ...] = ()
    demo: bool = False
    min_memory_gb: float | None = None  # free device memory (GiB) a run needs: less refuses before loading

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


def load_roster(path: Path) -> tuple[list[Instrument], list[DeadAlias]]:
    """Read and validate the roster at ``path``: its instruments and dead aliases, in file order."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read roster ({exc})") from exc
    return _parse_roster(raw, path)


_STR, _INT, _BOOL, _STRS, _NUM = "string", "positive integer", "boolean", "list of strings", "positive number"
_FIELD_TYPES: dict[str, str] = {
    "id": _STR, "key": _STR, "family": _STR, "role": _STR, "section": _STR, "source": _STR,
    "pipeline_tag": _STR, "library": _STR, "license": _STR, "output_kind": _STR,
    "output_dtype": _STR, "expected_dim": _INT, "input_size": _INT,
    "dim_config_field": _STR, "size_config_field": _STR, "preprocessing": _STR,
    "failure_modes": _STRS, "intended_use": _STR, "notes": _STR, "sealed_runs": _BOOL, "trust_remote_code": _BOOL,
    "remote_code_sha": _STR,
    "weight_id": _STR, "library_version": _STR, "aliases": _STRS, "demo": _BOOL,
    "url": _STR, "file_sha256": _STR, "min_memory_gb": _NUM,
}  # fmt: skip
_REQUIRED = ("id", "key", "family", "role", "section", "source")


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str) and bool(value.strip())
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
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
    if not INSTRUMENT_KEY.match(values["key"]):
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
    if "remote_code_sha" in values:
        if not values.get("trust_remote_code", False):
            raise fail("remote_code_sha", "names audited remote code, but trust_remote_code is not true")
        if not _COMMIT_RE.match(values["remote_code_sha"]):
            raise fail("remote_code_sha", f"{values['remote_code_sha']!r} is not a 40-hex lower-case commit sha")
    for config_field, declared in (
        ("dim_config_field", "expected_dim"),
        ("size_config_field", "input_size"),
    ):
        if config_field in values and declared not in values:
            raise fail(config_field, f"names a config field but {declared} is not declared")

    if "min_memory_gb" in values:
        values["min_memory_gb"] = float(values["min_memory_gb"])
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
