"""Pin changes, retirement, changed plates and hub drift, evaluated with Dagster's own automation
API against the home's real (SQLite) instance. A private loopback hub lets these tests move a demo
model's head without touching the session hub; nothing here loads model weights."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from PIL import Image

from awb_dagster.assets.automation import DEFAULT_MAX_RETRIES
from awb_dagster.assets.pins import pin_status
from awb_dagster.assets.plates import catalog_digest, plate_and_pin_sensor
from awb_dagster.cli import main
from awb_dagster.definitions import build_definitions
from awb_dagster.demo import LoopbackHub, build_tiny_repo, publish_demo_repos
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.pin_status import pin_statuses
from awb_dagster.resources import AwbHome, HubResource
from awb_dagster.runner import materialize_family

DINOV2 = "awb-demo/tiny-dinov2"
ASSET = dg.AssetKey("dinov2_embeddings")
FAMILY_ASSETS = dg.AssetSelection.keys("clip_embeddings", "siglip_embeddings", "dinov2_embeddings")
CRON = "0 2 * * *"
PLATES = (
    "AWKWARD_grayscale_haeckel_stammbaum_1866.png", "audubon_p001_wild-turkey.jpg", "audubon_p421_brown-pelican.jpg",
)  # fmt: skip


@dataclass
class PrivateHub:
    hub: LoopbackHub
    endpoint: str

    def commit(self, repo_id: str, seed: int) -> str:
        kind = repo_id.rsplit("-", 1)[-1]
        return self.hub.add_commit(
            repo_id, build_tiny_repo(kind, seed=seed), license="apache-2.0", library_name="transformers"
        )


@pytest.fixture(scope="module")
def private_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateHub]:
    hub = LoopbackHub(tmp_path_factory.mktemp("private-hub"))
    publish_demo_repos(hub)
    endpoint = hub.start()
    try:
        yield PrivateHub(hub, endpoint)
    finally:
        hub.stop()


def awb(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def pinned_key(out: str) -> str:
    return out.split("-> ")[1].split()[0]


class Ticks:
    """Automation evaluations of the family assets at chosen times, carrying the cursor."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None
        self.day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)

    def at(self, day: int, hour: int) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs,
            instance=self.instance,
            asset_selection=FAMILY_ASSETS,
            evaluation_time=self.day0 + timedelta(days=day, hours=hour),
            cursor=self.cursor,
        )
        self.cursor = result.cursor
        requested = result.get_requested_partitions(ASSET)
        assert result.total_requested == len(requested), "only dinov2 has pins here"
        return set(requested)


def materialized(instance: dg.DagsterInstance, keys: set[str]) -> None:
    """Record materializations as a finished backfill would (no model run needed here)."""
    for key in sorted(keys):
        instance.report_runless_asset_event(dg.AssetMaterialization(ASSET, partition=key))


def test_pin_change_retirement_and_changed_plate_drive_automation(private_hub, tmp_path, capsys):
    home_dir = tmp_path / "home"
    home = ["--home", str(home_dir)]
    endpoint = ["--endpoint", private_hub.endpoint]
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    for name in PLATES:
        shutil.copy(SAMPLE_PLATES_DIR / name, plates_dir / name)
    first = pinned_key(awb(capsys, "pin", DINOV2, *endpoint, *home))
    awb(capsys, "plates", "add", str(plates_dir), *home)
    paths = HomePaths(home_dir)
    resource = AwbHome(home=str(home_dir))
    plate_ids = list(resource.catalog().plates)
    instance = open_instance(paths)
    defs = build_definitions(home=str(home_dir), endpoint=private_hub.endpoint, automation_cron=CRON)
    observe = defs.resolve_job_def("observe_plate_files")
    assert observe.execute_in_process(instance=instance).success
    materialized(instance, {f"{first}|{p}" for p in plate_ids})

    ticks = Ticks(defs, instance)
    assert ticks.at(0, 1) == set()  # first evaluation: nothing is due
    assert observe.execute_in_process(instance=instance).success  # same bytes: same data versions
    assert ticks.at(0, 3) == set()  # the 02:00 tick passed, but nothing changed

    # A pin change by revision adds a pin key and keeps the old one.
    second_sha = private_hub.commit(DINOV2, seed=1)
    private_hub.commit(DINOV2, seed=2)  # the head moves past it
    second = pinned_key(awb(capsys, "pin", DINOV2, "--revision", second_sha, *endpoint, *home))
    assert instance.get_dynamic_partitions("dinov2_pins") == [first, second]
    assert ticks.at(0, 4) == set()  # not before the next cron tick
    assert ticks.at(1, 3) == {f"{second}|{p}" for p in plate_ids}  # exactly the new pin's partitions
    materialized(instance, {f"{second}|{p}" for p in plate_ids})
    assert ticks.at(2, 3) == set()

    # `awb pin MODEL` picks up the hub's new head; retiring that pin stops its automation.
    third = pinned_key(awb(capsys, "pin", DINOV2, *endpoint, *home))
    assert instance.get_dynamic_partitions("dinov2_pins") == [first, second, third]
    assert "retired" in awb(capsys, "pin", "--retire", third, *home)
    assert PinLock.load(paths.lock).automated_keys() == {first, second}
    assert ticks.at(3, 3) == set()
    assert instance.get_dynamic_partitions("dinov2_pins") == [first, second, third]  # history stays

    # A plate whose bytes changed is re-embedded for every pin that is not retired.
    changed = plates_dir / PLATES[0]
    with Image.open(changed) as image:
        edited = image.copy()
    edited.putpixel((0, 0), 255 - edited.getpixel((0, 0)))
    digest_before = catalog_digest(resource.catalog())
    edited.save(changed)
    awb(capsys, "plates", "add", str(plates_dir), *home)
    (plate,) = [p for p in resource.catalog().plates.values() if p.path == changed]
    assert plate.plate_id in plate_ids  # same plate id, new bytes

    sensor_context = dg.build_sensor_context(instance=instance, cursor=digest_before, resources={"home": resource})
    result = plate_and_pin_sensor(sensor_context)
    assert len(result.run_requests) == 1 and result.cursor == catalog_digest(resource.catalog())
    unchanged = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"home": resource})
    assert not plate_and_pin_sensor(unchanged).run_requests
    assert observe.execute_in_process(instance=instance).success  # what the sensor's run request runs

    assert ticks.at(3, 4) == set()  # seen, but requested on the cron
    assert ticks.at(4, 3) == {f"{first}|{plate.plate_id}", f"{second}|{plate.plate_id}"}
    assert ticks.at(5, 3) == set()  # handled: requested once


def test_pin_status_reports_a_moved_head_without_changing_the_lock(private_hub, tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    endpoint = ["--endpoint", private_hub.endpoint]
    clip = pinned_key(awb(capsys, "pin", "awb-demo/tiny-clip", *endpoint, *home))
    dinov2 = pinned_key(awb(capsys, "pin", DINOV2, *endpoint, *home))
    lock_path = HomePaths(tmp_path).lock
    lock_before = lock_path.read_bytes()
    out = awb(capsys, "pin", "--status", *endpoint, *home)
    assert out.count("up to date") == 2 and "moved" not in out

    new_head = private_hub.commit("awb-demo/tiny-clip", seed=7)
    out = awb(capsys, "pin", "--status", *endpoint, *home)
    (clip_row,) = [line for line in out.splitlines() if line.startswith("awb-demo/tiny-clip ")]
    assert clip in clip_row and "moved" in clip_row and new_head[:10] in clip_row
    assert f"hub's main is at {new_head}" in out
    assert any(line.startswith(DINOV2) and "up to date" in line for line in out.splitlines())

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pin_status], instance=instance, resources={"home": AwbHome(home=str(tmp_path)), "hub": HubResource()}
        )
        assert result.success
        metadata = result.asset_materializations_for_node("pin_status")[0].metadata
        rows = {row.data["pin"]: row.data for row in metadata["status"].value.records}
        (check,) = result.get_asset_check_evaluations()
    assert metadata["moved"].value == 1 and metadata["moved_pins"].value == [clip]
    assert rows[clip]["state"] == "moved" and rows[clip]["hub_head"] == new_head
    assert rows[dinov2]["state"] == "up to date"
    assert check.passed
    assert lock_path.read_bytes() == lock_before, "drift is reported, never acted on"

    (dinov2_pin,) = [pin for pin in PinLock.load(lock_path).active_pins() if pin.key == dinov2]
    weight_file = dataclasses.replace(dinov2_pin, sha="b" * 64)  # non-hub weights have no head
    unreachable = dataclasses.replace(dinov2_pin, endpoint="http://127.0.0.1:9")
    (status,) = pin_statuses([weight_file, unreachable])
    assert status.state == "error" and status.head is None and DINOV2 in status.error


def test_retire_names_an_unknown_pin_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pin", "--retire", "demo-tiny-dinov2@0000000000", "--home", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "demo-tiny-dinov2@0000000000" in capsys.readouterr().err


def _home_with_plates(private_hub, tmp_path, capsys):
    """A home with the tiny DINOv2 pinned and three plates registered; returns what the ticks need."""
    home_dir = tmp_path / "home"
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    for name in PLATES:
        shutil.copy(SAMPLE_PLATES_DIR / name, plates_dir / name)
    pin = pinned_key(awb(capsys, "pin", DINOV2, "--endpoint", private_hub.endpoint, "--home", str(home_dir)))
    awb(capsys, "plates", "add", str(plates_dir), "--home", str(home_dir))
    resource = AwbHome(home=str(home_dir))
    instance = open_instance(HomePaths(home_dir))
    defs = build_definitions(home=str(home_dir), endpoint=private_hub.endpoint, automation_cron=CRON)
    return pin, plates_dir, resource, instance, defs


def test_first_plate_observation_after_sealed_runs_requests_nothing(private_hub, tmp_path, capsys):
    """`awb demo` seals and materializes before the UI's plate sensor first observes plate_files:
    that first observation is a change for Dagster, but every plate's bytes are sealed."""
    pin, _, resource, instance, defs = _home_with_plates(private_hub, tmp_path, capsys)
    plates = list(resource.catalog().plates.values())
    run = resource.store().open_run(kind="dinov2-embeddings")
    artifact = run.write_bytes("records.bin", b"sealed elsewhere")
    for plate in plates:
        run.add_pair(plate_id=plate.plate_id, plate_sha256=plate.sha256, pin_key=pin, preprocess_tag="tag",
                     record_ids=[f"record-{plate.plate_id}"], artifact=artifact)  # fmt: skip
    run.seal()
    materialized(instance, {f"{pin}|{plate.plate_id}" for plate in plates})

    ticks = Ticks(defs, instance)
    assert ticks.at(0, 1) == set()
    assert defs.resolve_job_def("observe_plate_files").execute_in_process(instance=instance).success  # first observation
    assert ticks.at(0, 3) == set()


def test_a_failing_partition_is_retried_a_bounded_number_of_times(private_hub, tmp_path, capsys):
    pin, plates_dir, resource, instance, defs = _home_with_plates(private_hub, tmp_path, capsys)
    broken = next(plate for plate in resource.catalog().plates.values() if plate.path.name == PLATES[1])
    others = {f"{pin}|{p}" for p in resource.catalog().plates if p != broken.plate_id}
    materialized(instance, others)
    keep = tmp_path / "kept.jpg"
    shutil.move(broken.path, keep)  # its runs fail: the plate file is gone
    key = f"{pin}|{broken.plate_id}"

    def failing_run() -> None:
        (run,) = materialize_family(defs, instance, "dinov2", pin, [broken.plate_id], log_level="ERROR")
        assert not run.success

    ticks = Ticks(defs, instance)
    assert ticks.at(0, 1) == set()  # first evaluation: no cron tick has passed yet
    assert ticks.at(0, 3) == {key}  # missing
    failing_run()
    for day in range(1, 1 + DEFAULT_MAX_RETRIES):
        assert ticks.at(day, 3) == {key}, f"retry {day}"
        failing_run()
    assert ticks.at(1 + DEFAULT_MAX_RETRIES, 3) == set()  # shown as failed, no longer requested
    assert ticks.at(2 + DEFAULT_MAX_RETRIES, 3) == set()

    # Something changed: the plate's bytes. It is requested again.
    with Image.open(keep) as image:
        edited = image.copy()
    edited.putpixel((0, 0), tuple(255 - v for v in edited.getpixel((0, 0))))
    edited.save(plates_dir / PLATES[1])
    awb(capsys, "plates", "add", str(plates_dir), "--home", str(resource.home))
    assert resource.catalog().plates[broken.plate_id].sha256 != broken.sha256
    assert ticks.at(3 + DEFAULT_MAX_RETRIES, 3) == {key}
