"""License rules: which declared licenses need an explicit opt-in before an instrument runs."""

from __future__ import annotations

FLAGGED_LICENSES = frozenset({"other", "apple-amlr", "unknown", "varies"})
FLAGGED_LICENSE_PREFIXES = ("cc-by-nc",)


def license_needs_opt_in(license: str | None) -> bool:
    """True for licenses that need an explicit opt-in (undeclared ones included)."""
    if not license:
        return True
    tag = license.lower()
    return tag in FLAGGED_LICENSES or tag.startswith(FLAGGED_LICENSE_PREFIXES)
