"""The run launcher of every awb instance yaml: Dagster's ``DefaultRunLauncher`` (runs in a
subprocess of the code server) that can also say whether a run's worker is alive.

Dagster's default launcher cannot check a started run's worker, so its run monitoring leaves a
run whose worker was killed STARTED for ever, holding its ``gpu`` pool slot. Every run of an awb
instance names its process in tags (``awb_dagster.run_workers``); with them the daemon's run
monitoring (``run_monitoring`` in the yaml) marks such a run failed on its next pass, and the
slot is freed ``free_slots_after_run_end_seconds`` later.
"""

from __future__ import annotations

from dagster import DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # the launcher contract; no public name

from awb_dagster.run_workers import dead_worker


class AwbRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        reason = dead_worker(run.tags)
        if reason is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, msg=reason)
        # Alive, or not checkable from here (no process tags yet, another host): Dagster fails a
        # run on any status but RUNNING or SUCCESS, so an unknown worker is left running (its
        # start and cancel timeouts still apply).
        return CheckRunHealthResult(WorkerStatus.RUNNING, msg="the run's process is alive or not checkable from here")
