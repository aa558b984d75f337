"""Where this process's huggingface_hub (and transformers through it) talks to.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import. Setting the
variables later only reaches child processes, so the constants derived from them are
patched here too, and the ``HfApi`` that transformers caches (with its old endpoint) is
dropped.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit


def reset_transformers_hf_api() -> None:
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        transformers_hub._hf_api = None


def set_hub_endpoint(endpoint: str) -> None:
    """Send every hub request of this process (and of its children) to ``endpoint``."""
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    host = urlsplit(endpoint).hostname
    os.environ["HF_ENDPOINT"] = endpoint
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_URL_HOSTS = constants.HF_URL_HOSTS | ({host} if host else set())
    reset_transformers_hf_api()


def set_hub_offline(offline: bool) -> None:
    """Offline: load only from the local cache, at the locked sha."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
    constants.HF_HUB_OFFLINE = offline
