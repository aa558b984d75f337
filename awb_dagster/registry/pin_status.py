"""Whether the hub moved past a pin: the head of the branch or tag each pin follows, asked of
the hub without changing any pin (``awb pin --status``, the ``pin_status`` asset)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from awb_dagster.registry.hub_client import (
    COMMIT_SHA,
    DEFAULT_REVISION,
    PinError,
    check_endpoint,
    hub_errors,
    model_info,
    require_sha,
)
from awb_dagster.registry.lock import Pin


def followed_revision(pin: Pin) -> str:
    """The branch or tag whose head a pin is compared with; a pin requested by commit sha follows ``main``."""
    requested = pin.revision_requested
    return DEFAULT_REVISION if COMMIT_SHA.fullmatch(requested) else requested


def hub_head(pin: Pin, *, endpoint: str | None = None, token: str | None = None) -> str:
    """The commit sha the hub's :func:`followed_revision` of ``pin`` points at now."""
    hub = check_endpoint(pin.model_id, endpoint or pin.endpoint)
    followed = followed_revision(pin)
    with hub_errors(pin.model_id, hub, followed, token):
        return require_sha(model_info(pin.model_id, hub, token, followed), pin.model_id, hub)


def head_moved(pin: Pin, *, endpoint: str | None = None, token: str | None = None) -> str | None:
    """The hub's current head sha if it differs from ``pin.sha``, else ``None``.

    The head is that of the branch or tag the pin was captured from; a pin requested by commit
    sha follows ``main``.
    """
    head = hub_head(pin, endpoint=endpoint, token=token)
    return None if head == pin.sha else head


@dataclass(frozen=True)
class PinStatus:
    """Whether the hub moved past one pin. ``head`` is None when the hub could not tell."""

    pin: Pin
    followed: str
    head: str | None
    error: str | None = None

    @property
    def moved(self) -> bool:
        return self.head is not None and self.head != self.pin.sha

    @property
    def state(self) -> str:
        if self.error is not None:
            return "error"
        return "moved" if self.moved else "up to date"

    def to_row(self) -> dict[str, str]:
        """A flat row for tables (CLI, UI metadata)."""
        return {
            "model_id": self.pin.model_id,
            "pin": self.pin.key,
            "pinned_sha": self.pin.sha,
            "followed": self.followed,
            "hub_head": self.head or "",
            "state": self.state,
            "error": self.error or "",
        }


def pin_statuses(
    pins: Iterable[Pin], *, endpoint: str | None = None, token: str | None = None
) -> list[PinStatus]:
    """Ask the hub for the head of each pin's followed revision; never changes a pin.

    Pins of non-hub weights (a 64-hex sha256 of the weight file) have no head and are skipped.
    A hub failure for one model is recorded in its status (naming the model and what to do),
    so one gated or deleted model does not hide the others.
    """
    statuses = []
    for pin in pins:
        if not COMMIT_SHA.fullmatch(pin.sha):
            continue
        try:
            head: str | None = hub_head(pin, endpoint=endpoint, token=token)
            error = None
        except PinError as exc:
            head, error = None, str(exc)
        statuses.append(PinStatus(pin=pin, followed=followed_revision(pin), head=head, error=error))
    return statuses
