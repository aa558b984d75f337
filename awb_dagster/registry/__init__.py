"""The instrument registry: roster, pins, admission gate. Knows nothing about Dagster."""

from awb_dagster.registry.appendix import render_appendix
from awb_dagster.registry.licenses import PERMISSIVE_LICENSES, license_needs_opt_in, license_parts
from awb_dagster.registry.lock import LockError, Pin, PinLock
from awb_dagster.registry.model import (
    ADMISSION_FIELDS,
    LOCK_PATH,
    LicenseOptInError,
    NotAdmittedError,
    Registry,
    RegistryEntry,
    UnknownModelError,
)
from awb_dagster.registry.roster import (
    FAMILIES,
    OUTPUT_KINDS,
    ROSTER_PATH,
    SOURCES,
    DeadAlias,
    Instrument,
    RegistryError,
)

__all__ = [
    "ADMISSION_FIELDS",
    "FAMILIES",
    "LOCK_PATH",
    "OUTPUT_KINDS",
    "PERMISSIVE_LICENSES",
    "ROSTER_PATH",
    "SOURCES",
    "DeadAlias",
    "Instrument",
    "LicenseOptInError",
    "LockError",
    "NotAdmittedError",
    "Pin",
    "PinLock",
    "Registry",
    "RegistryEntry",
    "RegistryError",
    "UnknownModelError",
    "license_needs_opt_in",
    "license_parts",
    "render_appendix",
]
