"""Errors a user can act on are printed as one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def _user_error_types() -> tuple[type[BaseException], ...]:
    from awb_dagster.instruments.common import InstrumentError
    from awb_dagster.plates.catalog import CatalogError
    from awb_dagster.provenance.store import StoreError
    from awb_dagster.registry.lock import LockError
    from awb_dagster.registry.model import RegistryError
    from awb_dagster.registry.pins import PinError

    return (RegistryError, LockError, PinError, CatalogError, StoreError, InstrumentError, FileNotFoundError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Exit with status 2 and the error's message for the errors users fix themselves."""
    try:
        yield
    except _user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
