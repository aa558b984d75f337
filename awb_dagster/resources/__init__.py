"""Configurable resources: where things live, hub access, the torch device, loaded instruments,
and the deployment's settings that build them."""

from awb_dagster.resources.home import AwbHome
from awb_dagster.resources.hub import HubResource
from awb_dagster.resources.instruments import InstrumentsResource, TorchResource
from awb_dagster.resources.settings import build_resources

__all__ = ["AwbHome", "HubResource", "InstrumentsResource", "TorchResource", "build_resources"]
