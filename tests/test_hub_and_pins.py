"""Loopback hub, tiny checkpoints and pin capture, all against the loopback hub (no network)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import httpx

from awb_dagster.demo import DEMO_TOKEN, LoopbackHub, build_tiny_repo
from awb_dagster.registry import Instrument, PinLock, Registry
from awb_dagster.registry.hub_client import (
    GatedModelError,
    HubUnreachableError,
    ModelNotFoundError,
    NotPinnableError,
    RevisionNotFoundError,
    declared_license,
)
from awb_dagster.registry.pin_status import head_moved
from awb_dagster.registry.pins import DimMismatchError, capture_pin

if TYPE_CHECKING:
    from conftest import HubFixture

# (repo, config fields captured, output dim, input size) as declared for the demo instruments.
DEMO_PINS = [
    ("awb-demo/tiny-clip", {"projection_dim": 32, "vision_config.image_size": 32}, 32, 32),
    ("awb-demo/tiny-siglip", {"vision_config.hidden_size": 48, "vision_config.image_size": 32}, 48, 32),
    ("awb-demo/tiny-dinov2", {"hidden_size": 40, "image_size": 28}, 40, 28),
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


def instrument(registry: Registry, name: str, **changes: object) -> Instrument:
    """The roster's instrument ``name``, optionally with fields replaced (e.g. a test-only repo id)."""
    return dataclasses.replace(registry.get(name).instrument, **changes)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- tiny checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_tiny_repo_is_deterministic_per_seed(kind: str) -> None:
    files = build_tiny_repo(kind)
    # The text towers' tokenizers (awb search), as openai/clip-vit-* and google/siglip-* ship them.
    text = {"clip": {"tokenizer.json", "tokenizer_config.json"}, "siglip": {"spiece.model", "tokenizer_config.json"}}.get(kind, set())
    assert set(files) == {"config.json", "model.safetensors", "preprocessor_config.json", *text}
    assert build_tiny_repo(kind) == files
    assert build_tiny_repo(kind, seed=1)["model.safetensors"] != files["model.safetensors"]


def test_commit_sha_depends_on_repo_parent_and_content(tmp_path: Path) -> None:
    files = {"config.json": b"{}"}
    first, again = LoopbackHub(tmp_path / "a"), LoopbackHub(tmp_path / "b")
    sha = first.add_commit("awb-test/same", files)
    assert again.add_commit("awb-test/same", files) == sha
    assert again.add_commit("awb-test/other", files) != sha
    on_parent = first.add_commit("awb-test/same", files)
    changed = first.add_commit("awb-test/same", {"config.json": b"[]"})
    assert len({sha, on_parent, changed}) == 3
    assert first.head("awb-test/same") == changed


# --- the loopback hub speaks the hub's protocol -------------------------------------------


def test_model_info_parses_with_card_tags_and_siblings(loopback_hub: HubFixture) -> None:
    info = HfApi(endpoint=loopback_hub.endpoint).model_info("awb-demo/tiny-clip", files_metadata=True)
    assert info.id == "awb-demo/tiny-clip"
    assert info.sha == loopback_hub.shas["awb-demo/tiny-clip"]
    assert (info.pipeline_tag, info.library_name) == ("zero-shot-image-classification", "transformers")
    assert info.gated is False
    assert info.card_data is not None and info.card_data.license == "apache-2.0"
    assert "license:apache-2.0" in (info.tags or [])
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json",
                             "tokenizer.json", "tokenizer_config.json"}  # fmt: skip
    assert siblings["model.safetensors"].lfs is not None and siblings["config.json"].lfs is None


def test_tree_and_paths_info(loopback_hub: HubFixture) -> None:
    api, sha = HfApi(endpoint=loopback_hub.endpoint), loopback_hub.shas["awb-demo/tiny-dinov2"]
    paths = {entry.path for entry in api.list_repo_tree("awb-demo/tiny-dinov2", revision=sha)}
    assert paths == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    found = api.get_paths_info("awb-demo/tiny-dinov2", ["config.json", "missing.json"], revision=sha)
    assert [entry.path for entry in found] == ["config.json"]


def test_resolve_serves_bytes_with_hub_headers_and_ranges(loopback_hub: HubFixture) -> None:
    sha = loopback_hub.shas["awb-demo/tiny-siglip"]
    url = f"{loopback_hub.endpoint}/awb-demo/tiny-siglip/resolve/{sha}/model.safetensors"
    expected = build_tiny_repo("siglip")["model.safetensors"]
    head = httpx.head(url)
    assert head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(len(expected))
    assert "X-Xet-Hash" not in head.headers
    partial = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == expected[10:20]


@pytest.mark.parametrize(
    ("repo", "revision", "filename", "error"),
    [
        ("awb-test/no-such-repo", "main", "config.json", hf_errors.RepositoryNotFoundError),
        ("awb-demo/tiny-clip", "no-such-branch", "config.json", hf_errors.RevisionNotFoundError),
        ("awb-demo/tiny-clip", "main", "no-such-file.json", hf_errors.RemoteEntryNotFoundError),
    ],
)
def test_hub_errors_raise_huggingface_hub_typed_errors(
    loopback_hub: HubFixture, tmp_path: Path, repo: str, revision: str, filename: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        hf_hub_download(repo, filename, revision=revision, cache_dir=tmp_path)


def test_gated_repo_files_need_an_accepted_token(loopback_hub: HubFixture, tmp_path: Path) -> None:
    loopback_hub.hub.add_commit("awb-test/gated-files", {"config.json": b"{}"}, gated="manual")
    assert HfApi().model_info("awb-test/gated-files").gated == "manual"  # info is public, as on the hub
    for token in (None, "hf_not_accepted"):
        with pytest.raises(hf_errors.GatedRepoError):
            hf_hub_download("awb-test/gated-files", "config.json", cache_dir=tmp_path, token=token)
    path = hf_hub_download("awb-test/gated-files", "config.json", cache_dir=tmp_path, token=DEMO_TOKEN)
    assert Path(path).read_bytes() == b"{}"


def test_repos_persist_for_another_hub_on_the_same_root(loopback_hub: HubFixture) -> None:
    with LoopbackHub(loopback_hub.hub.root) as again:
        assert again.endpoint != loopback_hub.endpoint
        info = HfApi(endpoint=again.endpoint).model_info("awb-demo/tiny-dinov2")
    assert info.sha == loopback_hub.shas["awb-demo/tiny-dinov2"]


def test_hf_endpoint_env_var_works_in_a_fresh_process(loopback_hub: HubFixture) -> None:
    """HF_ENDPOINT is honoured when set before huggingface_hub is imported (here: a child process)."""
    code = "from huggingface_hub import HfApi; print(HfApi().model_info('awb-demo/tiny-clip').sha)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "HF_ENDPOINT": loopback_hub.endpoint},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == loopback_hub.shas["awb-demo/tiny-clip"]


# --- pin capture --------------------------------------------------------------------------


@pytest.mark.parametrize(("repo", "config", "output_dim", "input_size"), DEMO_PINS)
def test_capture_pin_of_demo_repo(
    loopback_hub: HubFixture, registry: Registry, repo: str, config: dict, output_dim: int, input_size: int
) -> None:
    inst = registry.get(repo).instrument
    pin = capture_pin(inst, endpoint=loopback_hub.endpoint)
    sha = loopback_hub.shas[repo]
    assert (pin.model_id, pin.sha, pin.revision_requested) == (repo, sha, "main")
    assert (pin.pipeline_tag, pin.library_name) == (inst.pipeline_tag, "transformers")
    assert (pin.license, pin.gated) == ("apache-2.0", False)
    assert dict(pin.config) == config
    assert (pin.output_dim, pin.input_size) == (output_dim, input_size)
    assert (output_dim, input_size) == (inst.expected_dim, inst.input_size)
    assert (pin.endpoint, pin.key) == (loopback_hub.endpoint, f"{inst.key}@{sha[:10]}")
    lock = PinLock()
    assert lock.add(pin) and not lock.add(pin)
    assert lock.active(repo) == pin


def test_dim_mismatch_is_refused(loopback_hub: HubFixture, registry: Registry) -> None:
    inst = registry.get("openai/clip-vit-base-patch32").instrument
    loopback_hub.hub.add_commit(inst.id, build_tiny_repo("clip"), library_name="transformers")
    expected = r"openai/clip-vit-base-patch32@\w{10}: config.json field 'projection_dim' is 32.*expected_dim = 512"
    with pytest.raises(DimMismatchError, match=expected):
        capture_pin(inst, endpoint=loopback_hub.endpoint)


def test_open_clip_config_is_read_when_config_json_is_absent(
    loopback_hub: HubFixture, registry: Registry
) -> None:
    inst = registry.get("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224").instrument
    open_clip_config = {"model_cfg": {"embed_dim": 512, "vision_cfg": {"image_size": 224}}}
    loopback_hub.hub.add_commit(
        inst.id, {"open_clip_config.json": json.dumps(open_clip_config).encode()}, license="mit"
    )
    pin = capture_pin(inst, endpoint=loopback_hub.endpoint)
    assert (pin.output_dim, pin.input_size, pin.license) == (512, 224, "mit")
    assert dict(pin.config) == {"model_cfg.embed_dim": 512, "model_cfg.vision_cfg.image_size": 224}


def test_unknown_model_is_not_found(loopback_hub: HubFixture, registry: Registry) -> None:
    inst = instrument(registry, "awb-demo/tiny-clip", id="awb-test/never-published")
    expected = rf"awb-test/never-published not found on {loopback_hub.endpoint}; check the id"
    with pytest.raises(ModelNotFoundError, match=expected):
        capture_pin(inst, endpoint=loopback_hub.endpoint)


def test_gated_model_needs_a_token(loopback_hub: HubFixture, registry: Registry) -> None:
    loopback_hub.hub.add_commit(
        "awb-test/gated-dinov2", build_tiny_repo("dinov2"), license="other", gated="auto"
    )
    inst = instrument(registry, "awb-demo/tiny-dinov2", id="awb-test/gated-dinov2")
    with pytest.raises(GatedModelError, match=r"gated.*HF_TOKEN.*Accept its license"):
        capture_pin(inst, endpoint=loopback_hub.endpoint)
    with pytest.raises(GatedModelError, match=r"token given has no access"):
        capture_pin(inst, endpoint=loopback_hub.endpoint, token="hf_not_accepted")
    pin = capture_pin(inst, endpoint=loopback_hub.endpoint, token=DEMO_TOKEN)
    assert (pin.gated, pin.license, pin.output_dim) == (True, "other", 40)


def test_unknown_revision_is_named(loopback_hub: HubFixture, registry: Registry) -> None:
    with pytest.raises(RevisionNotFoundError, match=r"awb-demo/tiny-clip has no revision 'v9\.9'"):
        capture_pin(
            registry.get("awb-demo/tiny-clip").instrument, revision="v9.9", endpoint=loopback_hub.endpoint
        )


def test_revision_pins_an_older_sha_and_head_moved_reports_the_new_head(
    loopback_hub: HubFixture, registry: Registry
) -> None:
    inst = instrument(registry, "awb-demo/tiny-dinov2", id="awb-test/two-commits")
    first = loopback_hub.hub.add_commit(inst.id, build_tiny_repo("dinov2", seed=0), license="apache-2.0")
    pin_first = capture_pin(inst, endpoint=loopback_hub.endpoint)
    second = loopback_hub.hub.add_commit(inst.id, build_tiny_repo("dinov2", seed=1), license="apache-2.0")

    assert capture_pin(inst, endpoint=loopback_hub.endpoint).sha == second
    older = capture_pin(inst, revision=first, endpoint=loopback_hub.endpoint)
    assert (older.sha, older.revision_requested) == (first, first)
    assert head_moved(pin_first) == second
    assert head_moved(older) == second
    assert head_moved(capture_pin(inst, endpoint=loopback_hub.endpoint)) is None


def test_unreachable_hub_fails_fast(registry: Registry, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match=r"cannot be reached.*HF_HUB_OFFLINE=1"):
        capture_pin(registry.get("awb-demo/tiny-clip").instrument, endpoint=endpoint, cache_dir=tmp_path)
    assert time.monotonic() - started < 5


def test_offline_mode_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, registry: Registry, loopback_hub: HubFixture
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="offline mode is on"):
        capture_pin(registry.get("awb-demo/tiny-clip").instrument, endpoint=loopback_hub.endpoint)


def test_non_hub_weights_are_not_pinnable_through_the_hub(registry: Registry) -> None:
    for source in ("torchvision",):  # tesseract pins the installed engine (test_ocr.py)
        inst = next(e.instrument for e in registry.entries if e.instrument.source == source)
        with pytest.raises(NotPinnableError, match=r"library version \+ weight id \+ sha256"):
            capture_pin(inst)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"cardData": {"license": "mit"}, "tags": ["license:apache-2.0"]}, "mit"),
        ({"tags": ["transformers", "license:cc-by-nc-4.0"]}, "cc-by-nc-4.0"),
        ({"cardData": {}, "tags": ["transformers"]}, "unknown"),
        # A list is recorded whole, each part normalized (the gate then checks every part).
        ({"cardData": {"license": ["apache-2.0", " CC-BY-NC-4.0"]}}, "apache-2.0,cc-by-nc-4.0"),
        ({"tags": ["license:mit", "license:cc-by-nd-4.0"]}, "mit,cc-by-nd-4.0"),
        ({"cardData": {"license": " Apache-2.0 "}}, "apache-2.0"),
    ],
)
def test_declared_license_is_never_assumed(info: dict, expected: str) -> None:
    assert declared_license(ModelInfo(id="awb-test/license", **info)) == expected


def test_a_license_list_on_the_card_is_pinned_whole_and_needs_the_opt_in(
    loopback_hub: HubFixture, registry: Registry, tmp_path: Path
) -> None:
    """Issue 10 item 6: `license: [apache-2.0, cc-by-nc-4.0]` ran without opt-in."""
    from awb_dagster.registry.model import RegistryEntry

    inst = instrument(registry, "awb-demo/tiny-dinov2", id="awb-test/license-list")
    loopback_hub.hub.add_commit(inst.id, build_tiny_repo("dinov2"), license=["apache-2.0", "CC-BY-NC-4.0 "])
    pin = capture_pin(inst, endpoint=loopback_hub.endpoint, cache_dir=tmp_path)
    assert pin.license == "apache-2.0,cc-by-nc-4.0"
    entry = RegistryEntry(inst, (pin,))  # the roster declares apache-2.0; the pin's card says more
    assert entry.flagged_licenses == ("cc-by-nc-4.0",) and entry.license_flagged


# --- the real loaders at the pinned sha ---------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "model_class", "output"),
    [
        ("awb-demo/tiny-clip", "CLIPVisionModelWithProjection", "image_embeds"),
        ("awb-demo/tiny-siglip", "SiglipVisionModel", "pooler_output"),
        ("awb-demo/tiny-dinov2", "Dinov2Model", "pooler_output"),
    ],
)
def test_tiny_models_load_at_the_pinned_sha(
    loopback_hub: HubFixture, registry: Registry, tmp_path: Path, repo: str, model_class: str, output: str
) -> None:
    import transformers

    pin = capture_pin(registry.get(repo).instrument, endpoint=loopback_hub.endpoint, cache_dir=tmp_path)
    first_request = len(loopback_hub.hub.request_log)
    model = getattr(transformers, model_class).from_pretrained(
        repo, revision=pin.sha, use_safetensors=True, cache_dir=tmp_path
    )
    processor = transformers.AutoImageProcessor.from_pretrained(repo, revision=pin.sha, cache_dir=tmp_path)
    pixels = processor(images=torch.zeros(3, 40, 50, dtype=torch.uint8), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == pin.input_size
    with torch.inference_mode():
        vector = getattr(model(pixel_values=pixels), output)
    assert vector.shape == (1, pin.output_dim)
    file_requests = [path for _, path in loopback_hub.hub.request_log[first_request:] if "/resolve/" in path]
    assert file_requests and all(f"{repo}/resolve/{pin.sha}/" in path for path in file_requests)
