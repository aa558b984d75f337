"""Configurable resources: where things live, hub access, the torch device, loaded instruments,
and the deployment's settings that build them.

The resources that load models (``InstrumentsResource``, ``TorchResource``, ``build_resources``)
import torch; they are imported on first use, so commands that only need the home (``awb plates
add``, the plate sensor) never pay for torch."""

from importlib import import_module
from typing import Any

from awb_dagster.resources.home import AwbHome
from awb_dagster.resources.hub import HubResource

_LAZY = {
    "InstrumentsResource": "awb_dagster.resources.instruments",
    "TorchResource": "awb_dagster.resources.instruments",
    "build_resources": "awb_dagster.resources.settings",
}

__all__ = ["AwbHome", "HubResource", "InstrumentsResource", "TorchResource", "build_resources"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
