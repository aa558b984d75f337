"""Sharded backfills: AWB_MAX_PARTITIONS_PER_RUN, device leases, and the distributed path proven
locally (the daemon's queued run coordinator launching two concurrent run workers over one
backfill of one pin, CPU, tiny weights from a private loopback hub)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from awb_dagster.assets.factory import build_family_asset, family_backfill_policy
from awb_dagster.cli import main
from awb_dagster.constants import GPU_POOL
from awb_dagster.demo import LoopbackHub, build_tiny_repo
from awb_dagster.demo.checkpoints import DEMO_LICENSE, DEMO_PIPELINE_TAGS
from awb_dagster.definitions import build_definitions
from awb_dagster.instance import GPU_SLOTS_ENV, dagster_env, gpu_pool_limit, open_instance
from awb_dagster.paths import REPO_ROOT, HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.producers import producers_for
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.store import RunStore
from awb_dagster.resources import AwbHome
from awb_dagster.resources import devices
from awb_dagster.resources.devices import DeviceLeaseError, claim_device, lease_path, leased_devices
from awb_dagster.resources.settings import build_resources, max_partitions_per_run
from test_e2e_webserver import (  # the e2e helpers: subprocesses and GraphQL
    ASSET,
    BACKFILL,
    DAEMON,
    FINISHED,
    LAUNCH_BACKFILL,
    LOCATION,
    WEBSERVER,
    GraphQL,
    Processes,
    _free_port,
)

RUNS = """
query Runs($ids: [String!]!) {
  runsOrError(filter: {runIds: $ids}) { ... on Runs { results { runId status startTime endTime
    tags { key value } } } }
}"""
TEST_BUDGET_S = 240  # typically 90-150 s on two shared cores
MODEL, KIND = "awb-demo/tiny-dinov2", "dinov2"


@pytest.fixture
def private_hub(tmp_path: Path) -> Iterator[str]:
    """A loopback hub serving one tiny DINOv2 revision; yields its endpoint."""
    hub = LoopbackHub(tmp_path / "hub")
    hub.add_commit(
        MODEL, build_tiny_repo(KIND, seed=0), license=DEMO_LICENSE,
        pipeline_tag=DEMO_PIPELINE_TAGS[KIND], library_name="transformers",
    )  # fmt: skip
    try:
        yield hub.start()
    finally:
        hub.stop()


def _awb(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize(("value", "expected"), [("", None), ("0", None), ("1", 1), ("250", 250)])
def test_max_partitions_per_run_setting(monkeypatch, value, expected):
    monkeypatch.setenv("AWB_MAX_PARTITIONS_PER_RUN", value)
    assert max_partitions_per_run() == expected


@pytest.mark.parametrize("value", ["-1", "many"])
def test_max_partitions_per_run_refuses_bad_values(monkeypatch, value):
    monkeypatch.setenv("AWB_MAX_PARTITIONS_PER_RUN", value)
    with pytest.raises(ValueError, match="AWB_MAX_PARTITIONS_PER_RUN"):
        max_partitions_per_run()


def test_family_assets_take_the_deployment_backfill_policy(monkeypatch):
    producer = next(p for p in producers_for(["dinov2"]) if p.asset_name == ASSET)
    assert build_family_asset(producer).backfill_policy == family_backfill_policy(None)
    monkeypatch.setenv("AWB_MAX_PARTITIONS_PER_RUN", "64")
    policy = build_family_asset(producer).backfill_policy
    assert policy == family_backfill_policy(64) and policy.max_partitions_per_run == 64


@pytest.mark.parametrize(("value", "expected"), [("", 1), ("1", 1), ("4", 4)])
def test_gpu_pool_slots_setting(monkeypatch, value, expected):
    monkeypatch.setenv(GPU_SLOTS_ENV, value)
    assert gpu_pool_limit() == expected


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_gpu_pool_slots_refuses_bad_values(monkeypatch, value):
    monkeypatch.setenv(GPU_SLOTS_ENV, value)
    with pytest.raises(ValueError, match=GPU_SLOTS_ENV):
        gpu_pool_limit()


@pytest.mark.parametrize(
    ("setting", "cards", "expected"),
    [
        ("auto", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("cuda", 2, ["cuda:0", "cuda:1"]),
        ("auto", 1, []),  # one card: nothing to choose
        ("auto", 0, []),  # CPU
        ("cuda:1", 4, []),  # an explicit card is used as given
        ("cpu", 4, []),
    ],
)
def test_leased_devices(setting, cards, expected):
    assert leased_devices(setting, cards) == expected


def test_concurrent_claims_get_different_cards_and_release_on_exit(tmp_path):
    cards = ["cuda:0", "cuda:1"]
    with claim_device(tmp_path, cards, "run a") as first, claim_device(tmp_path, cards, "run b") as second:
        assert {first, second} == set(cards)
        assert lease_path(tmp_path, first).read_text().startswith("run a")
        with pytest.raises(DeviceLeaseError, match="every device is leased") as failed:
            with claim_device(tmp_path, cards, "run c", timeout_s=0):
                pass
        assert "run a" in str(failed.value) and "run b" in str(failed.value)
    with claim_device(tmp_path, cards, "run d") as again:
        assert again == "cuda:0"


def test_step_resources_place_concurrent_runs_on_different_cards(tmp_path, monkeypatch):
    resources = build_resources(home=str(tmp_path / "home"))
    home, instruments, torch_settings = resources["home"], resources["instruments"], resources["torch_settings"]
    monkeypatch.setattr(devices, "visible_cuda_count", lambda: 2)
    with devices.step_resources(home, instruments, torch_settings, "run a", print) as (inst_a, torch_a):
        with devices.step_resources(home, instruments, torch_settings, "run b", print) as (inst_b, torch_b):
            assert {torch_a.device, torch_b.device} == {"cuda:0", "cuda:1"}
            assert inst_a.torch.device == torch_a.device and inst_b.torch.device == torch_b.device
            assert inst_a.home.home == instruments.home.home
    assert torch_settings.device == "auto", "the deployment's resource is left as it was"
    monkeypatch.setattr(devices, "visible_cuda_count", lambda: 1)
    with devices.step_resources(home, instruments, torch_settings, "run c", print) as placed:
        assert placed == (instruments, torch_settings)


def test_a_step_looks_up_only_its_own_sealed_pairs(tmp_path):
    store = RunStore(tmp_path / "store")
    for first in (0, 3):  # two sealed runs (two shards) of three plates each
        run = store.open_run(kind="shard")
        artifact = run.write_bytes("records.bin", b"records")
        for index in range(first, first + 3):
            run.add_pair(
                plate_id=f"p{index}", plate_sha256=f"sha{index}", pin_key="pin", preprocess_tag="tag",
                record_ids=[f"r{index}"], artifact=artifact,
            )  # fmt: skip
        run.seal()
    assert len(store.sealed_pairs("pin")) == 6
    step = store.sealed_pairs("pin", plate_ids={"p1", "p4", "p9"})
    assert sorted(step) == [("p1", "sha1", "tag"), ("p4", "sha4", "tag")]
    assert store.sealed_pairs("other pin", plate_ids={"p1"}) == {}


@pytest.mark.e2e
@pytest.mark.skipif(not (WEBSERVER.exists() and DAEMON.exists()), reason="dagster-webserver is not installed")
def test_one_backfill_two_concurrent_shards(private_hub, tmp_path, capsys, monkeypatch):
    started = time.monotonic()
    endpoint = private_hub
    home_dir, plates_dir = tmp_path / "home", tmp_path / "plates"
    plates_dir.mkdir()
    for plate in sorted(SAMPLE_PLATES_DIR.iterdir()):
        if plate.suffix in (".jpg", ".png"):
            shutil.copy(plate, plates_dir / plate.name)
    home = ["--home", str(home_dir)]
    pin = _awb(capsys, "pin", MODEL, "--endpoint", endpoint, *home).split("-> ")[1].split()[0]
    _awb(capsys, "plates", "add", str(plates_dir), *home)
    plate_ids = sorted(AwbHome(home=str(home_dir)).catalog().plates)
    per_run = (len(plate_ids) + 1) // 2  # two shards
    defs = build_definitions(home=str(home_dir), endpoint=endpoint)
    monkeypatch.setenv(GPU_SLOTS_ENV, "2")  # two cards' worth of gpu slots
    instance = open_instance(HomePaths(home_dir))
    assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 2
    assert defs.resolve_job_def("observe_plate_files").execute_in_process(instance=instance).success

    env = {
        **dagster_env(HomePaths(home_dir)),
        "HF_ENDPOINT": endpoint,
        "AWB_MAX_PARTITIONS_PER_RUN": str(per_run),
        "AWB_DECODE_WORKERS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    processes = Processes(tmp_path)
    try:
        workspace = str(REPO_ROOT / "workspace.yaml")
        port = _free_port()
        processes.start("webserver", [str(WEBSERVER), "-h", "127.0.0.1", "-p", str(port), "-w", workspace], env)
        graphql = GraphQL(port, processes, deadline=started + TEST_BUDGET_S)

        def location_loaded() -> bool:
            entries = graphql(LOCATION)["workspaceOrError"]["locationEntries"]
            states = [e["locationOrLoadError"] for e in entries if e["locationOrLoadError"]]
            assert not [s["message"] for s in states if s["__typename"] == "PythonError"]
            return bool(states) and states[0]["__typename"] == "RepositoryLocation"

        graphql.wait("the webserver to load the code location", 150, location_loaded)
        keys = sorted(f"{pin}|{plate}" for plate in plate_ids)
        launched = graphql(
            LAUNCH_BACKFILL,
            params={"partitionNames": keys, "assetSelection": [{"path": [ASSET]}], "fromFailure": False},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        processes.start("daemon", [str(DAEMON), "run", "-w", workspace], env)

        def backfill_finished() -> dict | None:
            backfill = graphql(BACKFILL, id=launched["backfillId"])["partitionBackfillOrError"]
            return backfill if backfill["status"] in FINISHED else None

        backfill = graphql.wait("the sharded backfill to finish", 200, backfill_finished)
        assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), f"{backfill}\n{processes.tail()}"
        run_ids = [run["runId"] for run in backfill["runs"]]
        runs = graphql(RUNS, ids=run_ids)["runsOrError"]["results"]
    finally:
        processes.stop()
    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"], f"two shards of {per_run} partitions: {runs}"
    first, second = sorted(runs, key=lambda run: run["startTime"])
    assert second["startTime"] < first["endTime"], f"the two shards ran one after the other: {runs}"

    store = AwbHome(home=str(home_dir)).store()
    manifests = [m for m in store.manifests() if m.payload.get("dagster_run_id") in run_ids]
    assert sorted(m.payload["dagster_run_id"] for m in manifests) == sorted(run_ids), "each shard seals one run"
    assert all(m.payload.get("device") for m in manifests), "each manifest names its device"
    record_ids = [rid for m in manifests for pair in m.pairs for rid in pair["record_ids"]]
    assert len(record_ids) == len(set(record_ids)) == len(plate_ids), "every plate once, no record sealed twice"
    assert sorted(pair["plate_id"] for m in manifests for pair in m.pairs) == plate_ids
    for record_id in record_ids:
        assert lineage(store, record_id)["record_id"] == record_id

    # The automation's next evaluations, before and after its nightly cron tick (02:00 UTC), request
    # nothing: every partition is done (bench/scale.py shows the same evaluations requesting all
    # partitions of a corpus with none materialized).
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    cursor = None
    for hours in (1, 3):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(ASSET),
            evaluation_time=tomorrow + timedelta(hours=hours), cursor=cursor,
        )  # fmt: skip
        cursor = result.cursor
        assert result.total_requested == 0, result.get_requested_partitions(ASSET)
    instance.dispose()
    print(f"sharded backfill: {len(plate_ids)} plates in 2 concurrent runs, {time.monotonic() - started:.0f} s in all")
