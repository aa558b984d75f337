"""Lineage still resolves after a model's pin has changed twice: every record of every pin
traces to its own weights, plate bytes, run and artifact, and old pins keep their history."""

from __future__ import annotations

import shutil

import pytest

from awb_dagster.assets.plates import scan_plates, sync_partitions
from awb_dagster.cli import main
from awb_dagster.definitions import build_definitions
from awb_dagster.demo import LoopbackHub, build_tiny_repo, publish_demo_repos
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.provenance.lineage import lineage
from awb_dagster.registry.lock import PinLock
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_family

DINOV2 = "awb-demo/tiny-dinov2"


def test_lineage_after_two_pin_changes(tmp_path, capsys):
    hub = LoopbackHub(tmp_path / "hub")
    publish_demo_repos(hub)
    endpoint = hub.start()
    try:
        home = HomePaths(tmp_path / "home")
        plates = tmp_path / "plates"
        plates.mkdir()
        for name in ("audubon_p421_brown-pelican.jpg", "AWKWARD_rgba-transparent_haeckel_radiolarian.png"):
            shutil.copy(SAMPLE_PLATES_DIR / name, plates / name)
        resource = AwbHome(home=str(home.root))
        scan_plates(resource, [plates])
        instance = open_instance(home)
        defs = build_definitions(home=str(home.root), endpoint=endpoint, offline=False)

        pin_keys = []
        for seed in (None, 1, 2):  # the published head, then two new revisions
            if seed is not None:
                hub.add_commit(DINOV2, build_tiny_repo("dinov2", seed=seed), license="apache-2.0")
            assert main(["pin", DINOV2, "--endpoint", endpoint, "--home", str(home.root)]) == 0
            pin_keys.append(PinLock.load(home.lock).active(DINOV2).key)
            sync_partitions(instance, resource)
            runs = materialize_family(defs, instance, "dinov2", pin_keys[-1])
            assert [r.success for r in runs] == [True]
        capsys.readouterr()
    finally:
        hub.stop()

    assert len(set(pin_keys)) == 3
    lock = PinLock.load(home.lock)
    assert [p.key for p in lock.pins_for(DINOV2)] == pin_keys  # history kept, oldest first
    store = resource.store()
    shas = set()
    for pin_key in pin_keys:
        pairs = store.sealed_pairs(pin_key)
        assert len(pairs) == 2
        for pair in pairs.values():
            info = lineage(store, pair.record_ids[0])
            assert info["model"]["pin_key"] == pin_key
            assert pin_key.endswith(info["model"]["sha"][:10])
            assert info["plate"]["sha256"] == pair.plate_sha256
            assert info["artifact"]["verified"] is True
            assert info["run_id"] == pair.run_id and info["dagster_run_id"] == pair.dagster_run_id
            shas.add(info["model"]["sha"])
    assert len(shas) == 3
    # The same plate under three pins: three different records (the model sha is in the id).
    first_plate = {p.plate_id: p.record_ids[0] for p in store.sealed_pairs(pin_keys[0]).values()}
    last_plate = {p.plate_id: p.record_ids[0] for p in store.sealed_pairs(pin_keys[2]).values()}
    assert set(first_plate) == set(last_plate)
    assert not set(first_plate.values()) & set(last_plate.values())
    # The CLI resolves the oldest pin's record too.
    old_record = next(iter(first_plate.values()))
    assert main(["lineage", old_record, "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert pin_keys[0] in out and "(verified)" in out


@pytest.fixture(autouse=True)
def _hub_endpoint_restored():
    """`awb pin --endpoint` points this process's hub settings at the private hub; restore."""
    from huggingface_hub import constants

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    yield
    constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = saved
