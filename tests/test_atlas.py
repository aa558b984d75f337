"""The atlas: kNN, overlap, CKA and the stop rule on constructed vectors with known structure;
the three corpus-level assets materialized over the sample plates with the demo instruments;
and the automation that re-requests them after new upstream materializations."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from awb_dagster.assets.atlas import ATLAS_ASSETS
from awb_dagster.assets.plates import scan_plates, sync_partitions
from awb_dagster.atlas.compare import bootstrap_mean, chance_jaccard, jaccard, linear_cka, overlap_at_k
from awb_dagster.atlas.knn import DEFAULT_BLOCK_BYTES, block_rows, consensus_prefix_knn, knn_cosine
from awb_dagster.atlas.maps import pca_map
from awb_dagster.atlas.topology import (
    CHANGES,
    STOP,
    consensus_changes,
    evaluate_order,
    first_stop,
    union_changes,
    verdict,
)
from awb_dagster.definitions import build_definitions
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.store import RunStore
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_atlas, materialize_family

# --- constructed vectors -------------------------------------------------------------------


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def rotated(x: np.ndarray, seed: int) -> np.ndarray:
    return np.ascontiguousarray(x @ rotation(x.shape[1], seed), dtype=np.float32)


def shuffled(x: np.ndarray, seed: int) -> np.ndarray:
    return np.ascontiguousarray(x[np.random.default_rng(seed).permutation(len(x))])


@pytest.mark.parametrize("n, dim, k, block_bytes", [(60, 8, 5, 1 << 30), (300, 24, 10, 20_000), (257, 16, 1, 9_000)])
def test_blocked_knn_is_exact(n, dim, k, block_bytes):
    x = unit_vectors(n, dim, seed=n)
    graph = knn_cosine(x, k, block_bytes=block_bytes)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    assert graph.indices.shape == (n, k) and graph.recall == 1.0
    assert (np.sort(graph.indices, axis=1) == np.sort(expected, axis=1)).all()
    assert not (graph.indices == np.arange(n)[:, None]).any(), "a node is never its own neighbour"
    assert (np.diff(graph.similarities, axis=1) <= 1e-6).all(), "most similar first"


def test_knn_block_stays_within_budget_at_segment_scale():
    rows = block_rows(50_000)
    assert 1 <= rows < 50_000 and rows * 50_000 * 4 * 2 <= DEFAULT_BLOCK_BYTES


@pytest.mark.parametrize("k", [0, 6])
def test_k_out_of_range_names_the_limit(k):
    with pytest.raises(ValueError, match="1 <= k <= N-1"):
        knn_cosine(unit_vectors(6, 4, 0), k)


@pytest.mark.parametrize("n, dim, k", [(200, 16, 10), (400, 48, 5)])
def test_identical_spaces_give_overlap_and_cka_one(n, dim, k):
    x = unit_vectors(n, dim, seed=1)
    a, b = knn_cosine(x, k).indices, knn_cosine(x.copy(), k).indices
    assert jaccard(a, b).min() == 1.0 and overlap_at_k(a, b).min() == 1.0
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_random_rotation_keeps_overlap_and_cka(seed):
    x = unit_vectors(300, 32, seed=seed)
    y = rotated(x, seed)
    a, b = knn_cosine(x, 10).indices, knn_cosine(y, 10).indices
    assert jaccard(a, b).mean() >= 0.999  # exact up to float32 round-off at near-ties
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 3.5 * y) == pytest.approx(1.0, abs=1e-6)  # and isotropic scaling


@pytest.mark.parametrize("n, k", [(400, 10), (1000, 5)])
def test_shuffled_vectors_give_overlap_near_chance(n, k):
    x = unit_vectors(n, 32, seed=5)
    a, b = knn_cosine(x, k).indices, knn_cosine(shuffled(x, 6), k).indices
    assert overlap_at_k(a, b).mean() == pytest.approx(k / (n - 1), rel=0.35)
    assert jaccard(a, b).mean() == pytest.approx(chance_jaccard(k, n), rel=0.35)
    assert linear_cka(x, shuffled(x, 6)) < 0.2


@pytest.mark.parametrize("n, k", [(50, 5), (200, 10)])
def test_chance_jaccard_matches_simulation(n, k):
    rng = np.random.default_rng(7)
    draws = np.array([rng.choice(n - 1, size=k, replace=False) for _ in range(8000)])
    simulated = jaccard(draws[:4000], draws[4000:]).mean()
    assert chance_jaccard(k, n) == pytest.approx(simulated, rel=0.1)
    assert overlap_at_k(draws[:4000], draws[4000:]).mean() == pytest.approx(k / (n - 1), rel=0.1)


def test_consensus_of_one_pin_is_its_knn_and_a_copy_changes_nothing():
    x = unit_vectors(250, 16, seed=8)
    prefixes = consensus_prefix_knn([x, rotated(x, 9), shuffled(x, 10)], 10, block_bytes=50_000)
    assert (np.sort(prefixes[0], axis=1) == np.sort(knn_cosine(x, 10).indices, axis=1)).all()
    changes = consensus_changes(prefixes)
    assert changes[0].mean() == 1.0
    assert changes[1].mean() <= 0.001  # a rotated copy adds nothing
    assert changes[2].mean() > 0.3  # an unrelated space moves the consensus


def test_union_changes_count_new_neighbours_only():
    x = unit_vectors(200, 16, seed=11)
    a, b, c = (knn_cosine(v, 10).indices for v in (x, rotated(x, 12), shuffled(x, 13)))
    changes = union_changes([a, b, c])
    assert changes[1].max() <= 0.001
    assert 0.4 < changes[2].mean() <= 0.5  # ~k new of ~2k in the union


@pytest.mark.parametrize("mean_change, threshold, expected", [(0.1, 0.1, CHANGES), (0.0999, 0.1, STOP), (0.5, 0.05, CHANGES), (0.0, 0.01, STOP)])
def test_verdict_at_the_threshold(mean_change, threshold, expected):
    assert verdict(mean_change, threshold) == expected


@pytest.mark.parametrize("offset, expected", [(0.0, CHANGES), (1e-9, STOP)])
def test_stop_verdict_flips_at_the_threshold_on_constructed_spaces(offset, expected):
    x = unit_vectors(240, 16, seed=14)
    blended = x + 0.6 * unit_vectors(240, 16, seed=15)
    spaces = [x, rotated(x, 16), (blended / np.linalg.norm(blended, axis=1, keepdims=True)).astype(np.float32)]
    changes = consensus_changes(consensus_prefix_knn(spaces, 8))
    measured = float(changes[2].mean())
    steps = evaluate_order(["x", "rotated-x", "blend"], changes, threshold=measured + offset, samples=200)
    assert steps[1].verdict == STOP and first_stop(steps, keep=1).pin_key == "rotated-x"
    assert steps[2].verdict == expected
    stop = first_stop(steps, keep=2)  # the rotated copy is part of the minimum ensemble
    assert (stop.pin_key if stop else None) == (None if expected == CHANGES else "blend")
    assert steps[2].change.low <= measured <= steps[2].change.high


def test_bootstrap_resamples_groups_and_is_reproducible():
    values = np.repeat([0.0, 1.0, 0.5, 0.25], 50)  # 4 plates of 50 segments each
    groups = np.repeat(["a", "b", "c", "d"], 50)
    by_group = bootstrap_mean(values, groups, samples=500, seed=1)
    by_value = bootstrap_mean(values, samples=500, seed=1)
    assert by_group == bootstrap_mean(values, groups, samples=500, seed=1)
    assert by_group.low <= by_group.mean <= by_group.high
    assert by_group.high - by_group.low > 3 * (by_value.high - by_value.low)  # 4 units, not 200


def test_pca_map_finds_the_plane_of_planar_data():
    rng = np.random.default_rng(17)
    plane = rng.standard_normal((300, 2)) * [3.0, 1.0]
    x = (np.pad(plane, ((0, 0), (0, 14))) @ rotation(16, 18)).astype(np.float32)
    first, second = pca_map(x), pca_map(x.copy())
    assert sum(first.explained_variance) == pytest.approx(1.0, abs=1e-6)
    assert first.explained_variance[0] > first.explained_variance[1]
    assert (first.coords == second.coords).all()  # deterministic, sign included


# --- the assets over the sample plates -----------------------------------------------------

FAMILY_OF = {"awb-demo/tiny-clip": "clip", "awb-demo/tiny-siglip": "siglip", "awb-demo/tiny-dinov2": "dinov2"}
K = 3  # six sample plates


@dataclass
class AtlasHome:
    resource: AwbHome
    instance: dg.DagsterInstance
    defs: dg.Definitions
    pins: dict[str, str]
    plate_ids: list[str]
    result: dg.ExecuteInProcessResult

    @property
    def store(self) -> RunStore:
        return self.resource.store()

    def metadata(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.asset_materialization.metadata


@pytest.fixture(scope="module")
def atlas_home(loopback_hub, tmp_path_factory) -> AtlasHome:
    paths = HomePaths(tmp_path_factory.mktemp("atlas-home"))
    plates_dir = tmp_path_factory.mktemp("atlas-plates")
    for plate in sorted(SAMPLE_PLATES_DIR.iterdir()):
        if plate.suffix in (".jpg", ".png"):
            shutil.copy(plate, plates_dir / plate.name)
    registry = Registry.load(lock_path=paths.lock)
    lock = PinLock.load(paths.lock)
    pins = {}
    for repo_id in FAMILY_OF:
        pin = capture_pin(registry.get(repo_id).instrument, endpoint=loopback_hub.endpoint)
        lock.add(pin)
        pins[FAMILY_OF[repo_id]] = pin.key
    lock.save(paths.lock)
    resource = AwbHome(home=str(paths.root))
    catalog, _ = scan_plates(resource, [plates_dir])
    instance = open_instance(paths)
    sync_partitions(instance, resource)
    defs = build_definitions(home=str(paths.root), endpoint=loopback_hub.endpoint, offline=False, batch_size=4)
    for family, pin_key in pins.items():
        assert all(run.success for run in materialize_family(defs, instance, family, pin_key))
    result = materialize_atlas(defs, instance, {"atlas": {"k": K}, "topology_report": {"bootstrap_samples": 200}})
    return AtlasHome(resource, instance, defs, pins, list(catalog.plates), result)


def test_the_three_assets_materialize(atlas_home: AtlasHome):
    assert atlas_home.result.success
    materialized = {e.asset_key.to_user_string() for e in atlas_home.result.get_asset_materialization_events()}
    assert materialized == {"atlas", "ensemble_disagreement", "topology_report"}


def test_atlas_graphs_maps_and_provenance(atlas_home: AtlasHome):
    metadata = atlas_home.metadata("atlas")
    rows = metadata["graphs"].value.records
    assert {row.data["pin"] for row in rows} == set(atlas_home.pins.values())
    assert all(row.data["nodes"] == len(atlas_home.plate_ids) and row.data["k"] == K for row in rows)
    assert all(row.data["method"] == "exact" and row.data["recall"] == 1.0 for row in rows)
    assert metadata["maps"].value.count("data:image/png;base64,") == 3
    assert "PCA" in metadata["map_method"].value

    manifest = atlas_home.store.manifest(metadata["run_id"].value)
    payload = manifest.payload
    assert payload["kind"] == "atlas" and payload["dagster_run_id"] == atlas_home.result.run_id
    assert {i["pin_key"] for i in payload["instruments"]} == set(atlas_home.pins.values())
    catalog = atlas_home.resource.catalog()
    assert {p["plate_id"]: p["sha256"] for p in payload["plates"]} == {p: catalog.plates[p].sha256 for p in atlas_home.plate_ids}
    for output in payload["outputs"]:
        assert sha256_file(manifest.run_dir / output["path"]) == output["sha256"]
    for space in payload["inputs"]["spaces"]:
        sealed = atlas_home.store.sealed_pairs(space["pin_key"])
        used = {r for source in space["sources"] for r in source["record_ids"]}
        assert used == {r for pair in sealed.values() for r in pair.record_ids}
        table = pq.read_table(manifest.run_dir / space["graph"]).to_pylist()
        assert len(table) == len(atlas_home.plate_ids)
        for row in table:
            assert len(row["neighbours"]) == K and row["node"] not in row["neighbours"]
            assert set(row["neighbours"]) <= set(atlas_home.plate_ids)
        assert (manifest.run_dir / space["map"]).read_bytes().startswith(b"\x89PNG")


def test_disagreement_pairs_headline_and_table(atlas_home: AtlasHome):
    metadata = atlas_home.metadata("ensemble_disagreement")
    pairs = metadata["pairs"].value.records
    assert len(pairs) == 3  # clip × dinov2, clip × siglip, dinov2 × siglip
    for pair in pairs:
        assert 0.0 <= pair.data["mean_jaccard"] <= 1.0 and 0.0 <= pair.data["linear_cka"] <= 1.0 + 1e-9
        assert pair.data["chance_jaccard"] == pytest.approx(chance_jaccard(K, len(atlas_home.plate_ids)), abs=1e-4)
        assert pair.data["graphs_from_atlas"] is True
    # CLIP-L/14 vs DINOv2-L is the configured headline; with the demo pins the fallback is CLIP × DINOv2.
    assert metadata["headline_pair"].value == f"{atlas_home.pins['clip']} vs {atlas_home.pins['dinov2']} (plate)"
    assert "CLIP × DINOv2" in metadata["headline"].value
    assert len(metadata["most_disagreeing"].value.records) == len(atlas_home.plate_ids)
    assert metadata["atlas_run_id"].value == atlas_home.metadata("atlas")["run_id"].value
    manifest = atlas_home.store.manifest(metadata["run_id"].value)
    assert manifest.payload["inputs"]["atlas_run_id"] == metadata["atlas_run_id"].value
    assert (manifest.run_dir / "disagreement.md").read_text().startswith("## ")


def test_topology_report_verdicts_and_file(atlas_home: AtlasHome):
    metadata = atlas_home.metadata("topology_report")
    verdicts = [row.data for row in metadata["verdicts"].value.records]
    order = [atlas_home.pins["clip"], atlas_home.pins["dinov2"], atlas_home.pins["siglip"]]
    assert [v["pin"] for v in verdicts] == order  # CLIP, then DINOv2 (the seed's minimum ensemble)
    assert verdicts[0]["mean_change"] == 1.0 and verdicts[0]["verdict"] == CHANGES
    for v in verdicts:
        assert v["verdict"] == (CHANGES if v["mean_change"] >= 0.1 else STOP)
        assert v["ci_low"] <= v["mean_change"] <= v["ci_high"]
    assert metadata["method"].value == "consensus" and metadata["threshold"].value == 0.1
    report = metadata["report_file"].value
    text = open(report, encoding="utf-8").read()
    assert "Stop condition" in text and "threshold **0.1**" in text and "topology-plate.png" in text
    assert "data:image/png;base64," in metadata["report"].value
    assert set(json.loads(json.dumps(metadata["stop_before"].value))) == {"plate"}


def test_configured_headline_order_and_method(atlas_home: AtlasHome):
    config = {
        "ensemble_disagreement": {"headline": ["awb-demo/tiny-siglip", atlas_home.pins["dinov2"]]},
        "topology_report": {"order": ["demo-tiny-siglip", "demo-tiny-clip"], "method": "union", "threshold": 0.5},
    }
    result = materialize_atlas(atlas_home.defs, atlas_home.instance, config, assets=list(config))
    assert result.success
    disagreement = atlas_home.metadata("ensemble_disagreement")
    assert disagreement["headline_pair"].value == f"{atlas_home.pins['dinov2']} vs {atlas_home.pins['siglip']} (plate)"
    assert "as configured" in disagreement["headline"].value
    topology = atlas_home.metadata("topology_report")
    assert [row.data["pin"] for row in topology["verdicts"].value.records] == [atlas_home.pins["siglip"], atlas_home.pins["clip"]]
    assert topology["method"].value == "union" and "union graph" in topology["report"].value


def test_an_order_naming_a_pin_the_atlas_lacks_fails_with_what_to_do(atlas_home: AtlasHome):
    config = {"topology_report": {"order": ["dinov2-large", "demo-tiny-clip"]}}
    result = materialize_atlas(atlas_home.defs, atlas_home.instance, config, assets=list(config))
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    message = failure.message + "".join(cause.message for cause in [failure.cause] if cause)
    assert "'dinov2-large' has no vectors in atlas run" in message and "materialize its embeddings" in message


# --- automation ----------------------------------------------------------------------------


def test_corpus_assets_depend_on_every_family_and_are_automated():
    from awb_dagster.assets.corpus import CORPUS_AUTOMATION
    from awb_dagster.assets.automation import AUTOMATION_SENSOR_NAME
    from awb_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("atlas")).parent_keys} == {
        "clip_embeddings", "siglip_embeddings", "dinov2_embeddings", "aimv2_embeddings", "biomedclip_embeddings",
        "convnet_embeddings", "segment_embeddings", "tile_embeddings",
    }  # fmt: skip
    for name in ("ensemble_disagreement", "topology_report"):
        assert graph.get(dg.AssetKey(name)).parent_keys == {dg.AssetKey("atlas")}
    for asset in ATLAS_ASSETS:
        assert asset.automation_conditions_by_key[asset.key] == CORPUS_AUTOMATION
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {asset.key for asset in ATLAS_ASSETS} <= sensor.asset_selection.resolve(graph)


def test_new_upstream_materialization_requests_the_atlas_once(tmp_path):
    """Family assets have hundreds of partitions, so Dagster does not propagate staleness to
    the atlas; the automation condition requests it (and, in the same tick, its downstream)."""
    defs = build_definitions(home=str(tmp_path / "home"))
    selection = dg.AssetSelection.assets(*ATLAS_ASSETS)
    keys = [dg.AssetKey(name) for name in ("atlas", "ensemble_disagreement", "topology_report")]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", ["p1", "p2"])
        instance.add_dynamic_partitions("clip_pins", ["tiny-clip@0123456789"])
        cursor = None

        def requested() -> list[int]:
            nonlocal cursor
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection, cursor=cursor)
            cursor = result.cursor
            return [result.get_num_requested(key) for key in keys]

        def materialize(asset: str, partition: str | None = None) -> None:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))

        assert requested() == [0, 0, 0], "nothing upstream has been materialized"
        assert requested() == [0, 0, 0]

        materialize("clip_embeddings", str(dg.MultiPartitionKey({"pin": "tiny-clip@0123456789", "plate": "p2"})))
        assert requested() == [1, 1, 1], "new upstream data: the atlas and its downstream, in one tick"
        assert requested() == [0, 0, 0], "a request is not repeated while nothing new happens"

        for asset in ("atlas", "ensemble_disagreement", "topology_report"):  # the requested run
            materialize(asset)
        assert requested() == [0, 0, 0], "the run that handled the request triggers nothing more"

        materialize("atlas")  # e.g. launched by hand from the UI
        assert requested() == [0, 1, 1]
