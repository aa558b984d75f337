"""Configurable resources: where things live, hub access, the torch device, loaded instruments."""

from awb_dagster.resources.home import AwbHome
from awb_dagster.resources.hub import HubResource
from awb_dagster.resources.instruments import InstrumentsResource, TorchResource

__all__ = ["AwbHome", "HubResource", "InstrumentsResource", "TorchResource"]
