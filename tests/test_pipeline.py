"""The embedding assets end to end: tiny real-architecture checkpoints from the loopback hub,
real plates, the project's Dagster instance, sealed runs and lineage."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import dagster as dg
import numpy as np
import polars as pl
import pytest

from awb_dagster.assets.plates import scan_plates, sync_partitions
from awb_dagster.definitions import build_definitions
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.records import record_id
from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.store import MANIFEST_NAME, RunStore
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_family

FAMILY_OF = {"awb-demo/tiny-clip": "clip", "awb-demo/tiny-siglip": "siglip", "awb-demo/tiny-dinov2": "dinov2"}
DIMS = {"clip": 32, "siglip": 48, "dinov2": 40}


@dataclass
class Home:
    paths: HomePaths
    resource: AwbHome
    instance: dg.DagsterInstance
    defs: dg.Definitions
    pins: dict[str, str]  # family -> pin key
    plate_ids: list[str]

    @property
    def store(self) -> RunStore:
        return self.resource.store()

    def materialize(self, family: str, plate_ids=None, **kwargs):
        return materialize_family(self.defs, self.instance, family, self.pins[family], plate_ids, **kwargs)


@pytest.fixture(scope="module")
def home(loopback_hub, tmp_path_factory) -> Home:
    paths = HomePaths(tmp_path_factory.mktemp("awb-home"))
    plates_dir = tmp_path_factory.mktemp("plates")
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
    catalog, result = scan_plates(resource, [plates_dir])
    assert not result.rejected
    instance = open_instance(paths)
    sync_partitions(instance, resource)
    defs = build_definitions(home=str(paths.root), endpoint=loopback_hub.endpoint, offline=False, batch_size=4)
    return Home(paths, resource, instance, defs, pins, list(catalog.plates))


def _materializations(home: Home, family: str) -> list:
    return home.instance.fetch_materializations(dg.AssetKey(f"{family}_embeddings"), limit=1000).records


def _table(store: RunStore, run_id: str) -> pl.DataFrame:
    manifest = store.manifest(run_id)
    return pl.concat([pl.read_parquet(manifest.run_dir / o["path"]) for o in manifest.payload["outputs"]])


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_range_materializes_in_one_run_with_one_model_load(home: Home, family: str):
    runs = home.materialize(family)
    assert [r.success for r in runs] == [True]  # every plate, one pin: one Dagster run
    records = _materializations(home, family)
    by_partition = {}
    for record in records:
        by_partition.setdefault(record.partition_key, []).append(record)
    expected = {f"{home.pins[family]}|{plate}" for plate in home.plate_ids}
    assert set(by_partition) == expected
    assert all(len(v) == 1 for v in by_partition.values()), "one materialization per partition"
    metadata = records[0].asset_materialization.metadata
    assert metadata["model_loads"].value == 1
    for key in ("record_id", "plate_sha256", "model_id", "model_sha", "license", "preprocess_tag",
                "artifact", "artifact_sha256", "run_id", "dagster_run_id", "pin"):  # fmt: skip
        assert key in metadata, key
    assert metadata["dagster_run_id"].value == runs[0].dagster_run_id
    assert metadata["status"].value == "computed"
    _assert_every_check_passed(home, family, runs[0].dagster_run_id)


def _assert_every_check_passed(home: Home, family: str, run_id: str) -> None:
    events = home.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data for e in events}
    assert set(evaluations) == {
        "vectors_finite", "vector_dim_declared", "vector_l2_unit_norm", "record_ids_unique", "artifact_checksums",
    }  # fmt: skip
    artifacts = {pair.artifact_path for pair in home.store.sealed_pairs(home.pins[family]).values()}
    for name, evaluation in evaluations.items():
        assert evaluation.passed, name
        assert evaluation.partition is None  # one evaluation per range run, not per partition
        checked = evaluation.metadata["checked"].value
        assert checked == (len(artifacts) if name == "artifact_checksums" else len(home.plate_ids)), name
        assert evaluation.metadata["failing"].value == 0


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_vectors_dims_norms_and_record_ids(home: Home, family: str):
    sealed = home.store.sealed_pairs(home.pins[family])
    assert {pair.plate_id for pair in sealed.values()} == set(home.plate_ids)
    run_id = next(iter(sealed.values())).run_id
    table = _table(home.store, run_id)
    vectors = np.array(table["vector"].to_list(), dtype=np.float32)
    unit = np.array(table["vector_l2"].to_list(), dtype=np.float32)
    assert vectors.shape == (len(home.plate_ids), DIMS[family])
    assert (table["vector_dim"] == DIMS[family]).all()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rtol=1e-5)
    assert np.isfinite(vectors).all()
    catalog = home.resource.catalog()
    for row in table.iter_rows(named=True):
        assert row["plate_sha256"] == catalog.plates[row["plate_id"]].sha256
        assert row["record_id"] == record_id(
            plate_sha256=row["plate_sha256"], model_sha=row["model_sha"],
            preprocess_tag=row["preprocess_tag"], scope="plate",
        )  # fmt: skip
    assert table["record_id"].n_unique() == table.height
    # different plates give different vectors (the instrument is not returning a constant)
    assert len({tuple(np.round(v, 5)) for v in vectors}) == len(vectors)


def test_manifest_is_complete_and_checksums_match(home: Home):
    pair = next(iter(home.store.sealed_pairs(home.pins["clip"]).values()))
    manifest = home.store.manifest(pair.run_id)
    payload = manifest.payload
    assert payload["status"] == "sealed" and payload["dagster_run_id"]
    assert payload["code_version"] and payload["libraries"]["torch"] and payload["libraries"]["transformers"]
    (instrument,) = payload["instruments"]
    assert instrument["model_id"] == "awb-demo/tiny-clip"
    assert instrument["sha"] == home.pins["clip"].split("@")[0] or instrument["pin_key"] == home.pins["clip"]
    assert instrument["license"] == "apache-2.0"
    assert instrument["failure_modes"] and instrument["preprocess_tag"] == pair.preprocess_tag
    assert {p["plate_id"] for p in payload["plates"]} == set(home.plate_ids)
    assert all(len(p["sha256"]) == 64 for p in payload["plates"])
    rows = 0
    for output in payload["outputs"]:
        path = manifest.run_dir / output["path"]
        assert sha256_file(path) == output["sha256"]
        assert not path.stat().st_mode & 0o222, "sealed artifacts are read-only"
        rows += output["rows"]
    assert rows == len(home.plate_ids) == len(payload["pairs"])
    tag = pair.preprocess_tag
    for part in ("dec=PIL-", "color=rgb-v1", "resize=", "bicubic", "crop=center", "norm=mean("):
        assert part in tag


def test_lineage_traces_a_record(home: Home):
    pair = next(iter(home.store.sealed_pairs(home.pins["dinov2"]).values()))
    info = lineage(home.store, pair.record_ids[0])
    catalog = home.resource.catalog()
    plate = catalog.plates[info["plate"]["plate_id"]]
    assert info["plate"]["sha256"] == plate.sha256 and info["plate"]["path"] == str(plate.path)
    assert info["model"]["model_id"] == "awb-demo/tiny-dinov2"
    assert info["model"]["pin_key"] == home.pins["dinov2"]
    assert info["run_id"] == pair.run_id and info["dagster_run_id"] == pair.dagster_run_id
    assert info["artifact"]["verified"] is True
    assert info["preprocess_tag"] == pair.preprocess_tag


def test_rerun_skips_sealed_pairs_and_force_recomputes_identically(home: Home):
    pin = home.pins["siglip"]
    before = home.store.sealed_pairs(pin)
    runs_before = len(home.store.run_dirs())
    assert all(r.success for r in home.materialize("siglip", home.plate_ids[:2]))
    assert len(home.store.run_dirs()) == runs_before, "nothing recomputed, no new sealed run"
    latest = _materializations(home, "siglip")[0].asset_materialization.metadata
    assert latest["status"].value.startswith("reused from sealed run")

    assert all(r.success for r in home.materialize("siglip", home.plate_ids[:2], force=True))
    after = home.store.sealed_pairs(pin)
    for key in list(after)[:2]:
        assert after[key].run_id != before[key].run_id
        assert after[key].record_ids == before[key].record_ids  # deterministic ids
    old = _table(home.store, before[key].run_id).filter(pl.col("record_id") == after[key].record_ids[0])
    new = _table(home.store, after[key].run_id).filter(pl.col("record_id") == after[key].record_ids[0])
    # Equal to float32 round-off: BLAS kernels depend on batch composition (2 plates vs 4).
    np.testing.assert_allclose(
        np.array(old["vector"].to_list()), np.array(new["vector"].to_list()), rtol=1e-5, atol=1e-5
    )


def test_unsealed_run_is_never_read_as_complete(home: Home):
    store = home.store
    run = store.open_run(kind="clip-embeddings")
    run.write_bytes("embeddings-00000.parquet", b"half written")
    assert run.run_dir in store.unsealed_runs()
    assert all(m.run_id != run.run_id for m in store.manifests())
    assert not (run.run_dir / MANIFEST_NAME).exists()


def test_changed_plate_bytes_fail_with_the_plate_named(home: Home, tmp_path):
    catalog = home.resource.catalog()
    plate = catalog.plates[home.plate_ids[0]]
    original = plate.path.read_bytes()
    try:
        plate.path.write_bytes(original + b"\0")  # bytes no longer match the registered sha256
        runs = home.materialize("dinov2", [plate.plate_id], force=True)
        assert not runs[0].success
        failure = home.instance.all_logs(runs[0].dagster_run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        message = failure[0].dagster_event.step_failure_data.error.message
        assert plate.plate_id in message and "sha256" in message.lower() or "changed" in message
    finally:
        plate.path.write_bytes(original)


def test_cli_lineage_json(home: Home, capsys):
    from awb_dagster.cli import main

    pair = next(iter(home.store.sealed_pairs(home.pins["clip"]).values()))
    assert main(["lineage", pair.record_ids[0], "--home", str(home.paths.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["record_id"] == pair.record_ids[0] and info["artifact"]["verified"]
