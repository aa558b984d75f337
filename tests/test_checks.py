"""The family assets' blocking checks on a real materialization: a sealed artifact altered after
the fact fails the checksum check, which names the file, and fails the step."""

from __future__ import annotations

import shutil

import dagster as dg

from awb_dagster.assets.plates import scan_plates, sync_partitions
from awb_dagster.definitions import build_definitions
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_family


def _evaluations(instance: dg.DagsterInstance, run_id: str) -> dict:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data for e in events}


def test_altered_artifact_fails_the_blocking_checksum_check_naming_the_file(loopback_hub, tmp_path):
    paths = HomePaths(tmp_path / "home")
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    for name in ("audubon_p026_carolina-parrot.jpg", "audubon_p421_brown-pelican.jpg"):
        shutil.copy(SAMPLE_PLATES_DIR / name, plates_dir / name)
    lock = PinLock()
    pin = capture_pin(Registry.load().get("awb-demo/tiny-dinov2").instrument, endpoint=loopback_hub.endpoint)
    lock.add(pin)
    lock.save(paths.lock)
    home = AwbHome(home=str(paths.root))
    scan_plates(home, [plates_dir])
    instance = open_instance(paths)
    sync_partitions(instance, home)
    defs = build_definitions(home=str(paths.root), endpoint=loopback_hub.endpoint, offline=False)

    (healthy,) = materialize_family(defs, instance, "dinov2", pin.key)
    assert healthy.success
    assert all(e.passed for e in _evaluations(instance, healthy.dagster_run_id).values())

    pair = next(iter(home.store().sealed_pairs(pin.key).values()))
    artifact = pair.artifact_path
    artifact.chmod(0o644)  # sealed artifacts are read-only: this test tampers on purpose
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    artifact.chmod(0o444)

    (rerun,) = materialize_family(defs, instance, "dinov2", pin.key)  # reuses the sealed pairs
    assert not rerun.success, "a failed blocking check fails the step"
    evaluations = _evaluations(instance, rerun.dagster_run_id)
    checksum = evaluations["artifact_checksums"]
    assert not checksum.passed and checksum.blocking
    named = f"{pair.run_id}/{pair.artifact}"
    assert named in checksum.description
    (row,) = checksum.metadata["failures"].value.records
    assert row.data["artifact"] == named and row.data["detail"].startswith("altered")
    (failure,) = instance.all_logs(rerun.dagster_run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    assert "artifact_checksums" in failure.dagster_event.step_failure_data.error.message
