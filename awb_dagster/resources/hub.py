"""Hub access: endpoint, token, offline mode, cache. Weights always load at the locked sha."""

from __future__ import annotations

import os
from typing import Optional

import dagster as dg
from pydantic import Field


def apply_hub_settings(endpoint: str | None, offline: bool) -> None:
    """Point huggingface_hub (and transformers through it) at ``endpoint``.

    huggingface_hub reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE`` once at import, so the
    environment is set for child processes and the already-imported constants are
    updated for this one.
    """
    from huggingface_hub import constants

    if endpoint:
        endpoint = endpoint.rstrip("/")
        os.environ["HF_ENDPOINT"] = endpoint
        constants.ENDPOINT = endpoint
        constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
    constants.HF_HUB_OFFLINE = offline


class HubResource(dg.ConfigurableResource):
    """How to reach the model hub. ``offline`` loads only from the cache at the locked sha."""

    endpoint: Optional[str] = Field(default=None, description="Hub URL; default $HF_ENDPOINT or huggingface.co")
    token: Optional[str] = Field(default=None, description="Token for gated models (use dg.EnvVar('HF_TOKEN'))")
    offline: bool = Field(default=False, description="Never contact the hub; use the local cache")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        apply_hub_settings(self.endpoint, self.offline)
        if self.token:
            os.environ["HF_TOKEN"] = self.token
