"""The default instance: embedded PostgreSQL held by whoever opens it, one planned event per
run, failed runs still marking their partitions failed; and SQLite still selectable."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from awb_dagster.instance import (
    INSTANCE_YAML,
    SQLITE_INSTANCE_YAML,
    dagster_env,
    home_instance,
    open_instance,
    prepare_dagster_home,
)
from awb_dagster.instance_server import EmbeddedPostgres
from awb_dagster.instance_storage import EVENT_BATCH_SIZE, embedded_server
from awb_dagster.paths import REPO_ROOT, HomePaths

PLATES = dg.DynamicPartitionsDefinition(name="t_plate")
PINS = dg.DynamicPartitionsDefinition(name="t_pin")
PARTITIONS = dg.MultiPartitionsDefinition({"plate": PLATES, "pin": PINS})
PIN = "tiny@0123456789"


def _asset(fail: bool):
    @dg.asset(name="tiny_embeddings", partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
    def tiny_embeddings(context) -> None:
        if fail:
            raise RuntimeError(f"plate decode failed in a run over {len(context.partition_keys)} partitions")

    return tiny_embeddings


def _run_range(instance, plates, fail: bool):
    asset = _asset(fail)
    job = dg.Definitions(assets=[asset], jobs=[dg.define_asset_job("tiny", selection=[asset])]).resolve_job_def("tiny")
    return job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": f"{PIN}|{plates[0]}",
            "dagster/asset_partition_range_end": f"{PIN}|{plates[-1]}",
        },
        raise_on_error=False,
    )


def _keys(plates):
    return [dg.MultiPartitionKey({"pin": PIN, "plate": p}) for p in plates]


@pytest.mark.parametrize("source", [INSTANCE_YAML, SQLITE_INSTANCE_YAML], ids=["embedded-postgres", "sqlite"])
def test_failed_range_run_marks_its_partitions_failed(source, tmp_path):
    plates = [f"plate-{i}" for i in range(6)]
    with home_instance(HomePaths(tmp_path), source) as instance:
        instance.add_dynamic_partitions(PLATES.name, plates)
        instance.add_dynamic_partitions(PINS.name, [PIN])
        ok = _run_range(instance, plates[:3], fail=False)
        failed = _run_range(instance, plates[3:], fail=True)
        assert ok.success and not failed.success
        if source == INSTANCE_YAML:
            planned = instance.get_records_for_run(
                failed.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            ).records
            assert len(planned) == 1  # one planned event for the three partitions of the run
        status = instance.get_status_by_partition(dg.AssetKey("tiny_embeddings"), _keys(plates), PARTITIONS)
        assert {str(k): v for k, v in status.items()} == {
            **{str(k): dg.AssetPartitionStatus.MATERIALIZED for k in _keys(plates[:3])},
            **{str(k): dg.AssetPartitionStatus.FAILED for k in _keys(plates[3:])},
        }
        # a later successful run clears the failure
        assert _run_range(instance, plates[3:], fail=False).success
        status = instance.get_status_by_partition(dg.AssetKey("tiny_embeddings"), _keys(plates), PARTITIONS)
        assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}


def test_instance_batches_event_writes_without_the_environment(tmp_path):
    # The embedded default by name: .ci/run reruns this file with AWB_INSTANCE_YAML=dagster.sqlite.yaml.
    with home_instance(HomePaths(tmp_path), INSTANCE_YAML) as instance:
        assert type(instance).__name__ == "AwbInstance"
        assert instance._get_event_batch_size() == EVENT_BATCH_SIZE
        assert instance.event_log_storage.supports_partition_subset_in_asset_materialization_planned_events
    assert "DAGSTER_EVENT_BATCH_SIZE" not in os.environ


def test_the_server_stops_when_the_last_holder_lets_go(tmp_path):
    paths = HomePaths(tmp_path)
    server = embedded_server(str(tmp_path))
    first = open_instance(paths, source=INSTANCE_YAML)  # the embedded server, whatever AWB_INSTANCE_YAML says
    second = open_instance(paths, source=INSTANCE_YAML)
    assert server.running() and list(server.holders()) == [str(os.getpid())]
    first.dispose()
    assert server.running()  # the second instance still holds it
    second.dispose()
    assert not server.running() and server.holders() == {}
    with home_instance(paths, INSTANCE_YAML) as instance:  # starts again, data kept
        assert instance.get_dynamic_partitions(PINS.name) == []


def test_a_holder_killed_without_letting_go_does_not_keep_the_server(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from awb_dagster.instance_server import "
         "EmbeddedPostgres; EmbeddedPostgres(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)",
         str(tmp_path / "dagster" / "postgres")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    server = EmbeddedPostgres(tmp_path / "dagster" / "postgres")
    assert server.running() and list(server.holders()) == [str(holder.pid)]
    server.acquire()
    server.release()
    assert not server.running() and server.holders() == {}


def test_every_process_of_a_home_gets_the_same_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("AWB_INSTANCE_YAML", raising=False)
    paths = HomePaths(tmp_path)
    env = dagster_env(paths, base={"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "DAGSTER_HOME": str(paths.dagster_home), "AWB_HOME": str(tmp_path)}
    written = yaml.safe_load((prepare_dagster_home(paths) / "dagster.yaml").read_text())
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        assert written[key]["config"] == {"home": str(tmp_path)}
    sqlite = yaml.safe_load((prepare_dagster_home(paths, SQLITE_INSTANCE_YAML) / "dagster.yaml").read_text())
    assert sqlite["storage"]["sqlite"]["base_dir"] == str(paths.dagster_home)
    # the root dagster.yaml itself names no home and no environment variable
    assert "env:" not in (REPO_ROOT / "dagster.yaml").read_text()
