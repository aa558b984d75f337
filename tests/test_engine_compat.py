"""A home sealed by the code before the engine (tests/fixtures/pre_engine_store: the family runs
of `awb demo` at commit 57c5a7c, same tiny checkpoints, same sample plates) is read and reused by
the engine: every family's partitions resolve to the old sealed pairs, nothing is recomputed, and
the record ids the UI shows are the ones sealed then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from awb_dagster.demo.pipeline import DEMO_SAM_CONFIG, DEMO_SEGMENT_CONFIG, DEMO_TILE_CONFIG
from awb_dagster.provenance.records import segment_pin_key
from awb_dagster.runner import materialize_family, materialize_masks, materialize_regions, materialize_semantic
from demo_homes import make_demo_home

FIXTURE = Path(__file__).parent / "fixtures" / "pre_engine_store"
REPOS = [
    "awb-demo/tiny-clip",
    "awb-demo/tiny-siglip",
    "awb-demo/tiny-dinov2",
    "awb-demo/tiny-sam",
    "awb-demo/tiny-sam-hq",
    "awb-demo/tiny-mask2former",
]


def _sealed_record_ids(runs: Path) -> dict[str, set[str]]:
    """Record ids by store pair key, read from the fixture's manifests."""
    found: dict[str, set[str]] = {}
    for manifest in runs.glob("*/run.manifest.json"):
        for pair in json.loads(manifest.read_text())["pairs"]:
            found.setdefault(pair["pin_key"], set()).update(pair["record_ids"][:1])
    return found


def _fixture_revisions(hub) -> dict[str, str]:
    """The hub revision each repo was pinned at when the fixture was sealed (the tiny CLIP's head
    has since gained its tokenizer; its first revision is the one sealed here)."""
    keys = set(_sealed_record_ids(FIXTURE / "runs"))
    revisions = {}
    for repo in REPOS:
        commits = hub.hub.read_repo(repo)["commits"]
        named = [sha for sha in commits if any(key.endswith(f"@{sha[:10]}") for key in keys)]
        assert len(named) == 1, (repo, named)
        revisions[repo] = named[0]
    return revisions


@pytest.fixture(scope="module")
def old_home(loopback_hub, tmp_path_factory):
    home = make_demo_home(
        loopback_hub, tmp_path_factory, "compat", REPOS, revisions=_fixture_revisions(loopback_hub),
        license_opt_in=["demo-tiny-mask2former"],
    )
    shutil.copytree(FIXTURE / "runs", home.paths.store / "runs", dirs_exist_ok=True)
    return home


def test_engine_reuses_a_home_sealed_before_it(old_home):
    pins = old_home.pins
    runs_before = sorted(p.name for p in (old_home.paths.store / "runs").iterdir())
    clip, dinov2, sam = pins["awb-demo/tiny-clip"], pins["awb-demo/tiny-dinov2"], pins["awb-demo/tiny-sam"]
    results = []
    for family, repo in (("clip", "awb-demo/tiny-clip"), ("siglip", "awb-demo/tiny-siglip"), ("dinov2", "awb-demo/tiny-dinov2")):
        results += materialize_family(old_home.defs, old_home.instance, family, pins[repo])
    for repo in ("awb-demo/tiny-sam", "awb-demo/tiny-sam-hq"):
        results += materialize_masks(old_home.defs, old_home.instance, pins[repo], config=DEMO_SAM_CONFIG)
    results += materialize_semantic(old_home.defs, old_home.instance, pins["awb-demo/tiny-mask2former"])
    for embedding in (clip, dinov2):
        results += materialize_regions(
            old_home.defs, old_home.instance, "segment", segment_pin_key(embedding, sam), config=DEMO_SEGMENT_CONFIG
        )
        results += materialize_regions(old_home.defs, old_home.instance, "tile", embedding, config=DEMO_TILE_CONFIG)
    assert results and all(run.success for run in results)

    # Nothing recomputed: no new sealed run.
    assert sorted(p.name for p in (old_home.paths.store / "runs").iterdir()) == runs_before

    # Every partition's materialization names an old sealed pair, reused.
    sealed = _sealed_record_ids(FIXTURE / "runs")
    plates = set(old_home.catalog.plates)
    for asset in (
        "clip_embeddings", "siglip_embeddings", "dinov2_embeddings", "sam_masks",
        "semantic_segmentation", "segment_embeddings", "tile_embeddings",
    ):  # fmt: skip
        records = old_home.instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
        assert records, asset
        by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
        for partition, metadata in by_partition.items():
            assert metadata["status"].value.startswith("reused"), (asset, partition)
            pair_key = metadata["pair"].value if "pair" in metadata else metadata["pin"].value
            assert metadata["record_id"].value in sealed[pair_key], (asset, partition)
        plates_seen = {key.split("|")[-1] for key in by_partition}
        assert plates_seen == plates, asset
