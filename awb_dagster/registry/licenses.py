"""License rules: an allow-list. A license runs without an explicit opt-in only when every one of
its parts is known-permissive; anything else (non-commercial, no-derivatives, custom, unknown,
undeclared, misspelt) needs the opt-in.

A declared license may be one tag (``apache-2.0``), a list (a model card's ``license:
[apache-2.0, cc-by-nc-4.0]``) or that list as the comma-joined text the lock stores. Each part
is checked on its own and the most restrictive part wins. Parts are compared normalized:
lower case, surrounding whitespace and a ``license:`` tag prefix removed.
"""

from __future__ import annotations

from collections.abc import Iterable

PERMISSIVE_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "isc", "zlib",
        "unlicense", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0", "bsl-1.0", "postgresql",
    }
)  # fmt: skip
"""Licenses that allow use, modification and commercial use without conditions beyond attribution."""

UNDECLARED = "unknown"


def license_parts(license: str | Iterable[str] | None) -> tuple[str, ...]:
    """The normalized parts of a declared license: one per list item or comma-separated tag, lower
    case, stripped, without a ``license:`` prefix, in order, without repeats; ``("unknown",)`` when
    nothing is declared."""
    items = [license] if license is None or isinstance(license, str) else list(license)
    parts: list[str] = []
    for item in items:
        for raw in str(item if item is not None else "").split(","):
            part = raw.strip().lower().removeprefix("license:").strip()
            if part and part not in parts:
                parts.append(part)
    return tuple(parts) or (UNDECLARED,)


def normalize_license(license: str | Iterable[str] | None) -> str:
    """The declared license as the lock records it: its normalized parts joined by commas."""
    return ",".join(license_parts(license))


def restrictive_parts(license: str | Iterable[str] | None) -> tuple[str, ...]:
    """The parts of a license that are not known-permissive: each needs the opt-in."""
    return tuple(part for part in license_parts(license) if part not in PERMISSIVE_LICENSES)


def license_needs_opt_in(license: str | Iterable[str] | None) -> bool:
    """True unless every part of the license is known-permissive (undeclared ones need it too)."""
    return bool(restrictive_parts(license))
