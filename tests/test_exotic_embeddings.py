"""Exotic embedding families (seed 4) and CLIP-H through open_clip: tiny checkpoints in the published
layouts embed the shared plates, open_clip's image tower matches open_clip's own loader, one
Dagster run per path into the atlas and the topology report, the remote-code refusal, and the
license opt-ins of AIMv2 (apple-amlr) and ImageBind (cc-by-nc-sa-4.0)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest
import torch

from awb_dagster.instruments.common import hub_kwargs
from awb_dagster.instruments.embedders import load_embedder
from awb_dagster.instruments.open_clip_embedding import OpenClipEmbedder
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR, PlateCatalog
from awb_dagster.plates.imaging import load_rgb
from awb_dagster.producers.embeddings import EmbeddingSession
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.model import LicenseOptInError, Registry, RegistryEntry
from awb_dagster.registry.pin_files import snapshot_dir
from awb_dagster.registry.pins import capture_pin
from awb_dagster.registry.remote_code import REMOTE_CODE_ENV, RemoteCodeError, remote_code_allowed
from awb_dagster.registry.roster import RegistryError, load_roster

OPEN_CLIP, BIOMEDCLIP, AIMV2 = "awb-demo/tiny-open-clip", "awb-demo/tiny-biomedclip", "awb-demo/tiny-aimv2"
DIMS = {OPEN_CLIP: 32, BIOMEDCLIP: 16, AIMV2: 32}
FAMILIES = {OPEN_CLIP: "clip", BIOMEDCLIP: "biomedclip", AIMV2: "aimv2"}


@pytest.fixture(scope="module")
def pins(loopback_hub) -> dict[str, tuple]:
    registry = Registry.load()
    return {
        repo: (registry.get(repo).instrument, capture_pin(registry.get(repo).instrument, endpoint=loopback_hub.endpoint))
        for repo in DIMS
    }


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> PlateCatalog:
    catalog = PlateCatalog(tmp_path_factory.mktemp("exotic-catalog") / "catalog.json")
    catalog.scan([SAMPLE_PLATES_DIR])
    return catalog


@pytest.mark.parametrize("repo", DIMS)
def test_tiny_exotic_checkpoints_embed_the_shared_plates(repo, pins, catalog):
    instrument, pin = pins[repo]
    embedder = load_embedder(instrument, pin, device="cpu", dtype="float32")
    session = EmbeddingSession(embedder, SimpleNamespace(batch_size=4, decode_workers=1), max_pixels=10**8)
    plates = list(catalog.plates.values())
    vectors = embedder.embed(embedder.pixel_values([session.prepare(plate) for plate in plates]))
    assert vectors.shape == (len(plates), DIMS[repo]) and np.isfinite(vectors).all()
    assert len({row.tobytes() for row in vectors}) == len(plates)  # every plate its own vector
    assert {session.expected_tag(plate) for plate in plates} == {embedder.preprocess_tag}
    described = embedder.describe()
    assert described["output_dim"] == DIMS[repo] and described["family"] == FAMILIES[repo]
    if instrument.library == "open_clip":
        assert isinstance(embedder, OpenClipEmbedder) and "proc=open_clip-" in embedder.preprocess_tag
        # BiomedCLIP's repo holds only the pickle: the pin carries it, torch.load(weights_only=True) reads it.
        expected = "open_clip_pytorch_model.bin" if repo == BIOMEDCLIP else "open_clip_model.safetensors"
        assert described["weight_file"] == expected and expected in pin.files
    else:
        assert described["output_field"] == "last_hidden_state.mean(tokens)"


def test_open_clip_image_tower_matches_open_clips_own_loader(pins, catalog, loopback_hub):
    import open_clip

    instrument, pin = pins[OPEN_CLIP]
    ours = OpenClipEmbedder(instrument, pin, device="cpu", dtype="float32", jpeg_draft=False)
    folder = snapshot_dir(Path(loopback_hub.cache_dir), instrument.id, pin.sha)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    images = [load_rgb(plate.path, max_pixels=10**8) for plate in catalog.plates.values()]
    with torch.inference_mode():
        theirs = model.eval().encode_image(torch.stack([preprocess(image) for image in images])).numpy()
    np.testing.assert_allclose(ours.embed(torch.stack([ours.prepare(image) for image in images])), theirs, atol=1e-5)


def test_biomedclip_runs_in_dagster_as_its_own_family(loopback_hub, tmp_path_factory):
    from awb_dagster.runner import materialize_family
    from demo_homes import make_demo_home

    home = make_demo_home(loopback_hub, tmp_path_factory, "exotic", [BIOMEDCLIP], batch_size=4)
    runs = materialize_family(home.defs, home.instance, "biomedclip", home.pin_key)
    assert runs and all(run.success for run in runs)
    sealed = home.store.sealed_pairs(home.pin_key)
    assert {pair.plate_id for pair in sealed.values()} == set(home.catalog.plates)
    event = home.instance.get_latest_materialization_event(dg.AssetKey("biomedclip_embeddings"))
    manifest = home.store.manifest(next(iter(sealed.values())).run_id).payload
    (described,) = manifest["instruments"]
    assert described["library"] == "open_clip" and described["weight_file"] == "open_clip_pytorch_model.bin"
    assert event.asset_materialization.metadata["vector_dim"].value == DIMS[BIOMEDCLIP]


def test_exotic_pins_join_the_atlas_and_the_topology_order(tmp_path, pins):
    from awb_dagster.assets.atlas import atlas_pins
    from awb_dagster.definitions import defs
    from awb_dagster.registry.lock import PinLock

    lock = PinLock()
    for _, pin in pins.values():
        lock.add(pin)
    lock.save(tmp_path / "pins.lock.json")
    registry = Registry.load(lock_path=tmp_path / "pins.lock.json")
    # The atlas (and the topology report's default order) takes every embedding family's pins.
    assert [pin.key for _, pin in atlas_pins(registry, [])] == [pins[r][1].key for r in (OPEN_CLIP, AIMV2, BIOMEDCLIP)]
    parents = {key.to_user_string() for key in defs.resolve_asset_graph().get(dg.AssetKey("atlas")).parent_keys}
    assert {"aimv2_embeddings", "biomedclip_embeddings", "clip_embeddings"} <= parents


# --- remote code and license gates ----------------------------------------------------------


def _pin_of(instrument, sha: str = "b" * 40, **overrides) -> Pin:
    fields = dict(
        model_id=instrument.id, sha=sha, revision_requested="main", pipeline_tag=instrument.pipeline_tag,
        library_name=instrument.library, license=instrument.license or "unknown", gated=False, config={},
        output_dim=instrument.expected_dim, input_size=instrument.input_size, pinned_at="2026-01-02T03:04:05+00:00",
        endpoint="https://huggingface.co", instrument_key=instrument.key,
    )  # fmt: skip
    return Pin(**{**fields, **overrides})


def test_remote_code_runs_only_at_the_audited_sha_with_the_opt_in(monkeypatch):
    eva = Registry.load().get("BAAI/EVA-CLIP-8B").instrument
    pin = _pin_of(eva)
    monkeypatch.delenv(REMOTE_CODE_ENV, raising=False)
    # As the roster declares it: custom code, no audited sha -> every load refused, naming entry and flag.
    with pytest.raises(RemoteCodeError, match=r"'BAAI/EVA-CLIP-8B' \(eva-clip-8b\).*remote_code_sha.*AWB_ALLOW_REMOTE_CODE"):
        hub_kwargs(eva, pin, cache_dir=None, local_files_only=True)
    audited = dataclasses.replace(eva, remote_code_sha=pin.sha)
    with pytest.raises(RemoteCodeError, match="AWB_ALLOW_REMOTE_CODE=eva-clip-8b"):
        remote_code_allowed(audited, pin)
    monkeypatch.setenv(REMOTE_CODE_ENV, "some-other-model, eva-clip-8b")
    assert hub_kwargs(audited, pin, cache_dir=None, local_files_only=True)["trust_remote_code"] is True
    with pytest.raises(RemoteCodeError, match=f"audited at remote_code_sha {'b' * 40}.*is commit {'c' * 40}"):
        remote_code_allowed(audited, _pin_of(eva, sha="c" * 40))
    # An entry without remote code never passes trust_remote_code, whatever the environment says.
    clip = Registry.load().get("awb-demo/tiny-clip").instrument
    assert hub_kwargs(clip, _pin_of(clip), cache_dir=None, local_files_only=True)["trust_remote_code"] is False


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('remote_code_sha = "' + "a" * 40 + '"\n', "trust_remote_code is not true"),
        ('trust_remote_code = true\nremote_code_sha = "main"\n', "not a 40-hex lower-case commit sha"),
    ],
)
def test_roster_validates_remote_code_sha(tmp_path, extra, problem):
    roster = tmp_path / "roster.toml"
    roster.write_text(
        '[[instrument]]\nid = "org/model-a"\nkey = "model-a"\nfamily = "eva-clip"\nrole = "r"\nsection = "4.1"\n'
        'source = "hf"\n' + extra,
        encoding="utf-8",
    )
    with pytest.raises(RegistryError, match=f"'org/model-a', field 'remote_code_sha': .*{problem}"):
        load_roster(roster)


@pytest.mark.parametrize(
    ("model_id", "license"),
    [("apple/aimv2-large-patch14-336-distilled", "apple-amlr"), ("nielsr/imagebind-huge", "cc-by-nc-sa-4.0")],
)
def test_flagged_exotic_licenses_need_the_opt_in(model_id, license):
    entry = Registry.load().get(model_id)
    assert entry.instrument.license == license and entry.instrument.license_flagged
    # Admitted but for the license (as once an adapter runs it), the gate still asks for the opt-in.
    runnable = dataclasses.replace(entry.instrument, sealed_runs=True, trust_remote_code=False, preprocessing="p")
    registry = Registry([RegistryEntry(runnable, (_pin_of(runnable),))])
    with pytest.raises(LicenseOptInError, match=f"license '{license}'.*license_opt_in"):
        registry.require_admitted(model_id)
    assert registry.require_admitted(model_id, license_opt_in=[license]).instrument is runnable
    assert registry.require_admitted(model_id, license_opt_in=[runnable.key]).instrument is runnable


def test_pin_carries_the_open_clip_pickle_only_where_no_open_clip_safetensors_exists():
    from huggingface_hub.hf_api import RepoSibling

    from awb_dagster.registry.pin_files import pinned_siblings

    def pinned(*names: str) -> list[str]:
        info = SimpleNamespace(siblings=[RepoSibling(rfilename=name) for name in names])
        return [sibling.rfilename for sibling in pinned_siblings(info)]

    biomedclip = ("open_clip_config.json", "open_clip_pytorch_model.bin", "vocab.txt", "README.md")
    assert pinned(*biomedclip) == ["open_clip_config.json", "open_clip_pytorch_model.bin", "vocab.txt"]
    clip_h = ("config.json", "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
              "pytorch_model.bin")  # fmt: skip
    assert pinned(*clip_h) == ["config.json", "open_clip_config.json", "open_clip_model.safetensors"]
    assert pinned("pytorch_model.bin", "config.json") == ["config.json"]  # other pickles: never
