"""The remote-code gate: a model whose repo ships its own Python (``trust_remote_code``) runs only
when its roster entry names the exact commit whose code was audited (``remote_code_sha``), the pin
being loaded is that commit, and the user opted in through :data:`REMOTE_CODE_ENV`, naming the
entry. Anything short of all three refuses with the entry, what is missing and how to supply it.
No Dagster here."""

from __future__ import annotations

import os
from collections.abc import Mapping

from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument, RegistryError

REMOTE_CODE_ENV = "AWB_ALLOW_REMOTE_CODE"
"""Comma-separated instrument keys or ids allowed to run their repo's code (at the audited sha)."""


class RemoteCodeError(RegistryError):
    """A load would run a repo's own Python without the audited sha or the user's opt-in."""


def remote_code_opt_ins(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The instrument names (lower case) :data:`REMOTE_CODE_ENV` opts into."""
    raw = (os.environ if environ is None else environ).get(REMOTE_CODE_ENV, "")
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def remote_code_allowed(instrument: Instrument, pin: Pin | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a load of ``instrument`` at ``pin`` passes ``trust_remote_code``: False for an entry
    that declares no remote code; True only for the audited sha with the opt-in; otherwise raises
    :class:`RemoteCodeError` naming the entry and the flag."""
    if not instrument.trust_remote_code:
        return False
    entry = f"roster entry {instrument.id!r} ({instrument.key})"
    if instrument.remote_code_sha is None:
        raise RemoteCodeError(
            f"{entry} ships custom code (trust_remote_code = true) but declares no remote_code_sha: "
            "audit the repo's Python at the pinned commit, then set remote_code_sha to that commit in "
            f"roster.toml and opt in with {REMOTE_CODE_ENV}={instrument.key}"
        )
    if pin is not None and pin.sha != instrument.remote_code_sha:
        raise RemoteCodeError(
            f"{entry}: its code was audited at remote_code_sha {instrument.remote_code_sha}, but pin "
            f"{pin.key} is commit {pin.sha}; audit the code at that commit and update remote_code_sha, "
            f"or run the audited commit (`awb pin {instrument.id} --revision {instrument.remote_code_sha}`)"
        )
    if not remote_code_opt_ins(environ) & {name.lower() for name in instrument.names}:
        raise RemoteCodeError(
            f"{entry} runs its repo's own Python (audited at {instrument.remote_code_sha}); opt in by "
            f"setting {REMOTE_CODE_ENV}={instrument.key} in the environment of the run"
        )
    return True
