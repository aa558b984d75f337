"""Where this process's huggingface_hub (and transformers through it) talks to.

huggingface_hub's own calls take ``endpoint=``, ``token=``, ``cache_dir=`` and
``local_files_only=``, and awb passes them explicitly. ``transformers.from_pretrained`` takes
every one of them but the endpoint: it downloads through ``huggingface_hub.constants.ENDPOINT``,
read from ``HF_ENDPOINT`` once, at import. So the endpoint of a run is set on those library
constants (the narrowest switch transformers offers), never in the process environment, and
the ``HfApi`` that transformers caches with its old endpoint is dropped.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit


def reset_transformers_hf_api() -> None:
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        transformers_hub._hf_api = None


def set_hub_endpoint(endpoint: str) -> None:
    """Send this process's hub requests that take no ``endpoint=`` (transformers' downloads) to
    ``endpoint``."""
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    host = urlsplit(endpoint).hostname
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_URL_HOSTS = constants.HF_URL_HOSTS | ({host} if host else set())
    reset_transformers_hf_api()
