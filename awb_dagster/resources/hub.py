"""Hub access: endpoint, token, offline mode, cache. Weights always load at the locked sha."""

from __future__ import annotations

from typing import Optional

import dagster as dg
from pydantic import Field

from awb_dagster.registry.hub_settings import set_hub_endpoint


class HubResource(dg.ConfigurableResource):
    """How to reach the model hub. A pin whose files `awb pin` fetched into the home's cache
    loads from that cache alone, whatever these say (no endpoint needed). ``offline`` loads every
    pin only from the cache at the locked sha (passed to every load as ``local_files_only``); the
    endpoint and token serve pins taken before pins carried their files."""

    endpoint: Optional[str] = Field(default=None, description="Hub URL; default $HF_ENDPOINT or huggingface.co")
    token: Optional[str] = Field(default=None, description="Token for gated models (use dg.EnvVar('HF_TOKEN'))")
    offline: bool = Field(default=False, description="Never contact the hub; use the local cache")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # transformers downloads take no endpoint argument: see awb_dagster.registry.hub_settings.
        if self.endpoint:
            set_hub_endpoint(self.endpoint)
