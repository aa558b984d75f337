"""Shared fixtures: isolation from the real Hugging Face Hub, and a session-wide loopback hub.

``huggingface_hub`` reads its settings from the environment once, when it is first imported, so
they are set here, before any test module imports it: telemetry and update checks off, a throwaway
``HF_HOME`` (no cached token, no user cache) and ``HF_ENDPOINT`` on a closed local port, so a call
that is not pointed at the loopback hub fails at once instead of reaching the network.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="awb-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _variable in (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH", "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING",
):  # fmt: skip
    os.environ.pop(_variable, None)
os.environ.update(
    HF_HOME=_HF_HOME,
    HF_ENDPOINT="http://127.0.0.1:9",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_UPDATE_CHECK="1",
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_HUB_ETAG_TIMEOUT="5",
    HF_HUB_DOWNLOAD_TIMEOUT="10",
)

from huggingface_hub import constants  # noqa: E402  (must follow the environment set-up)

from awb_dagster.demo import LoopbackHub, publish_demo_repos, use_hub_endpoint  # noqa: E402


@dataclass(frozen=True)
class HubFixture:
    """The running loopback hub and what the demo repos were published as."""

    hub: LoopbackHub
    endpoint: str
    shas: dict[str, str]  # demo repo id -> commit sha of its head
    cache_dir: Path  # the session's HF hub cache (``HF_HUB_CACHE``)


@pytest.fixture(scope="session")
def loopback_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFixture]:
    """A loopback hub serving the tiny demo repos, with huggingface_hub and transformers pointed at it.

    Shared by the whole session: tests that need more repos commit them under their own ids and
    leave the demo repos' heads alone.
    """
    hub = LoopbackHub(tmp_path_factory.mktemp("loopback-hub"))
    shas = publish_demo_repos(hub)
    cache_dir = tmp_path_factory.mktemp("hf-cache")
    endpoint = hub.start()
    try:
        with use_hub_endpoint(endpoint), pytest.MonkeyPatch.context() as patch:
            patch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
            patch.setenv("HF_HUB_CACHE", str(cache_dir))
            # Code locations built without an explicit endpoint read HF_ENDPOINT (as dg.EnvVar).
            patch.setenv("HF_ENDPOINT", endpoint)
            yield HubFixture(hub=hub, endpoint=endpoint, shas=shas, cache_dir=cache_dir)
    finally:
        hub.stop()


@pytest.fixture(autouse=True)
def _let_go_of_embedded_servers() -> Iterator[None]:
    """Collect the test's unreachable Dagster instances after it: their storages let go of the
    home's embedded PostgreSQL server, which then stops, so a session does not keep one server per
    test home running until it exits."""
    yield
    import gc

    gc.collect()
