"""Runs launched by the UI, a sensor or a schedule whose worker process dies (issue 10, item 4):
every run names the process that executes it, and Dagster's own run monitoring (the daemon's
``monitor_started_run``, asking the instances' ``AwbRunLauncher``) marks a run of a dead worker
failed, while runs of live workers, and of workers it cannot check, are left running."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from dagster._daemon.monitoring.run_monitoring import monitor_started_run  # the daemon's own pass

from awb_dagster.instance import INSTANCE_YAML, SQLITE_INSTANCE_YAML, open_instance
from awb_dagster.paths import REPO_ROOT, HomePaths
from awb_dagster.run_launcher import AwbRunLauncher
from awb_dagster.run_workers import HOST_TAG, PID_STARTED_TAG, PID_TAG


@dg.op
def _noop() -> None:
    return None


@dg.job
def _tiny_job() -> None:
    _noop()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("yaml_name", ["dagster.yaml", "dagster.sqlite.yaml", "dagster.postgres.yaml"])
def test_every_instance_yaml_uses_the_health_checking_launcher(yaml_name):
    launcher = yaml.safe_load((REPO_ROOT / yaml_name).read_text())["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("awb_dagster.run_launcher", "AwbRunLauncher")


@pytest.mark.parametrize("source", [INSTANCE_YAML, SQLITE_INSTANCE_YAML], ids=["embedded-postgres", "sqlite"])
def test_run_monitoring_fails_the_runs_of_dead_workers(source, tmp_path):
    instance = open_instance(HomePaths(tmp_path / "home"), source=source)
    try:
        assert isinstance(instance.run_launcher, AwbRunLauncher)
        # The process that reports a run's start (here: this one) is named in the run's tags.
        result = _tiny_job.execute_in_process(instance=instance)
        tags = instance.get_run_by_id(result.run_id).tags
        assert (tags[HOST_TAG], tags[PID_TAG]) == (platform.node(), str(os.getpid()))

        def started_run(run_tags: dict[str, str]) -> dg.DagsterRun:
            return instance.create_run_for_job(_tiny_job, tags=run_tags, status=dg.DagsterRunStatus.STARTED)

        dead_pid = _dead_pid()
        dead = started_run({HOST_TAG: platform.node(), PID_TAG: str(dead_pid), PID_STARTED_TAG: "1"})
        alive = started_run(dict(tags))
        elsewhere = started_run({HOST_TAG: "another-host", PID_TAG: str(dead_pid), PID_STARTED_TAG: "1"})
        untagged = started_run({})
        logger = logging.getLogger("test_run_worker_health")
        for run in (dead, alive, elsewhere, untagged):
            (record,) = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))
            monitor_started_run(instance, None, record, logger)

        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"the process {dead_pid} on {platform.node()}" in failure[-1].message
        for run in (alive, elsewhere, untagged):
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        instance.dispose()
