"""Deployment settings (awb_dagster.resources.settings): the token and deploy settings reach
the resources as dg.EnvVar, read when a run starts; nothing writes the process environment."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from awb_dagster.resources import HubResource, TorchResource
from awb_dagster.resources.settings import build_resources, env_flag, env_int


@pytest.fixture(autouse=True)
def _hub_endpoint_restored():
    """A run's hub resource points this process's huggingface_hub at its endpoint; restore."""
    from huggingface_hub import constants

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_URL_HOSTS)
    yield
    constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_URL_HOSTS = saved


def _seen_at_run_time(resources: dict) -> dict:
    """The hub and torch settings a run sees, read inside an asset."""
    seen = {}

    @dg.asset
    def probe(hub: HubResource, torch_settings: TorchResource) -> None:
        seen.update(token=hub.token, endpoint=hub.endpoint, device=torch_settings.device,
                    batch_size=torch_settings.batch_size)  # fmt: skip

    result = dg.materialize([probe], resources={"hub": resources["hub"], "torch_settings": resources["torch_settings"]})
    assert result.success
    return seen


def test_token_and_device_are_read_when_the_run_starts(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_at_load")
    monkeypatch.setenv("AWB_DEVICE", "cpu")
    resources = build_resources(home=str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_rotated")  # a rotated secret reaches the next run
    monkeypatch.setenv("AWB_DEVICE", "cuda:1")
    seen = _seen_at_run_time(resources)
    assert seen["token"] == "hf_rotated" and seen["device"] == "cuda:1"


def test_without_token_definitions_load_and_runs_start(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HF_ENDPOINT", "AWB_DEVICE", "AWB_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    seen = _seen_at_run_time(build_resources(home=str(tmp_path)))
    assert seen == {"token": None, "endpoint": None, "device": "auto", "batch_size": 32}


def test_arguments_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWB_DEVICE", "cuda")
    monkeypatch.setenv("AWB_BATCH_SIZE", "64")
    resources = build_resources(home=str(tmp_path), device="cpu", batch_size=4, endpoint="http://127.0.0.1:9")
    seen = _seen_at_run_time(resources)
    assert (seen["device"], seen["batch_size"], seen["endpoint"]) == ("cpu", 4, "http://127.0.0.1:9")


def test_building_and_running_leave_the_environment_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = dict(os.environ)
    resources = build_resources(home=str(tmp_path), endpoint="http://127.0.0.1:9")
    assert resources["hub"].offline is True
    _seen_at_run_time(resources)
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    ("reader", "name", "value", "message"),
    [
        (env_flag, "AWB_JPEG_DRAFT", "maybe", "AWB_JPEG_DRAFT='maybe': use one of"),
        (env_int, "AWB_BATCH_SIZE", "many", "AWB_BATCH_SIZE='many': expected a whole number"),
    ],
)
def test_bad_setting_fails_naming_the_variable(monkeypatch, reader, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        reader(name, 1)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("0", False), ("false", False), ("", True)])
def test_flag_words(monkeypatch, value, expected):
    monkeypatch.setenv("AWB_JPEG_DRAFT", value)
    assert env_flag("AWB_JPEG_DRAFT", True) is expected
