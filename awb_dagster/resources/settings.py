"""The resources of one deployment, from explicit arguments or the environment.

The secret and the deploy settings a run can read for itself go to the resources as
``dg.EnvVar`` (Dagster reads the variable when a run starts; the value is never captured
when the definitions load, nor shown in the UI): ``HF_TOKEN``, ``HF_ENDPOINT`` and
``AWB_DEVICE``. An ``EnvVar`` whose variable is unset fails every run in Dagster 1.13, even on
an optional field, so a variable unset at load leaves the field's default (``None`` for the
token: public models need none).

Read at load, as plain values: ``AWB_HOME`` (the lock and catalog shape the partitions),
``AWB_LICENSE_OPT_IN`` (it decides which pins automation requests), ``AWB_DTYPE`` and
``AWB_DECODER`` (``Literal`` fields take no ``EnvVar``), ``AWB_BATCH_SIZE`` and
``AWB_DECODE_WORKERS`` (``EnvVar.int`` is validated as 0 at load, which their ``ge=1`` bound
refuses) and the booleans ``HF_HUB_OFFLINE`` and ``AWB_JPEG_DRAFT`` (``EnvVar`` has no boolean
form). A bad value of these fails at load, naming the variable.

``AWB_MAX_PARTITIONS_PER_RUN`` (read at load: it shapes the family assets' backfill policy):
unset or 0, one run per pin over all plates; N, a backfill is split into runs of at most N
contiguous partitions, so that several GPUs (or machines) share it."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from awb_dagster.paths import resolve_home
from awb_dagster.resources.home import AwbHome
from awb_dagster.resources.hub import HubResource
from awb_dagster.resources.instruments import InstrumentsResource, TorchResource

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env_or(name: str, default: Any) -> Any:
    """``dg.EnvVar(name)`` when ``name`` is set, else ``default``."""
    return dg.EnvVar(name) if name in os.environ else default


def env_int(name: str, default: int) -> int:
    """A whole-number setting read now; anything else fails naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r}: expected a whole number (default {default})") from None


def env_flag(name: str, default: bool) -> bool:
    """A boolean setting read now; anything but a yes/no word fails naming the variable."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")


def env_list(name: str) -> list[str]:
    """A comma list read now (``AWB_LICENSE_OPT_IN=a,b``)."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def max_partitions_per_run() -> int | None:
    """``AWB_MAX_PARTITIONS_PER_RUN``: None (unset or 0) for single-run backfills, else N >= 1."""
    value = env_int("AWB_MAX_PARTITIONS_PER_RUN", 0)
    if value < 0:
        raise ValueError(f"AWB_MAX_PARTITIONS_PER_RUN={value}: expected 0 (one run per pin) or a positive number")
    return value or None


def build_resources(
    *,
    home: str | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    decode_workers: int | None = None,
    jpeg_draft: bool | None = None,
    decoder: str | None = None,
    seal_every: int | None = None,
    license_opt_in: list[str] | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """The code location's resources; an argument given here wins over the environment."""
    home_resource = AwbHome(home=str(resolve_home(home)))
    hub = HubResource(
        endpoint=endpoint or env_or("HF_ENDPOINT", None),
        token=env_or("HF_TOKEN", None),
        offline=offline if offline is not None else env_flag("HF_HUB_OFFLINE", False),
    )
    torch_settings = TorchResource(
        device=device or env_or("AWB_DEVICE", "auto"),
        dtype=dtype or os.environ.get("AWB_DTYPE", "auto"),
        batch_size=batch_size or env_int("AWB_BATCH_SIZE", 32),
        decode_workers=decode_workers or env_int("AWB_DECODE_WORKERS", 4),
        jpeg_draft=jpeg_draft if jpeg_draft is not None else env_flag("AWB_JPEG_DRAFT", True),
        decoder=decoder or os.environ.get("AWB_DECODER", "pil"),
        seal_every=seal_every if seal_every is not None else env_int("AWB_SEAL_EVERY", 0),
    )
    opt_in = license_opt_in if license_opt_in is not None else env_list("AWB_LICENSE_OPT_IN")
    return {
        "home": home_resource,
        "hub": hub,
        "torch_settings": torch_settings,
        "instruments": InstrumentsResource(home=home_resource, hub=hub, torch=torch_settings, license_opt_in=opt_in),
    }
