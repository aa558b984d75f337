"""Which process executes a run, and whether it is still alive.

Every run of an awb instance names the process that executes it in three tags (``awb/host``,
``awb/pid``, ``awb/pid_started``): ``awb run`` and ``awb demo`` set them at launch (they execute
in their own process), and :class:`~awb_dagster.instance_storage.AwbInstance` adds them when a run
worker launched by the UI, a sensor or a schedule reports the run's start. With the tags, a run
whose process died (``kill -9``, out of memory, a crash) is told apart from a slow one:

- :func:`worker_status` answers Dagster's run monitoring through
  :class:`~awb_dagster.run_launcher.AwbRunLauncher` (the daemon marks such runs failed);
- ``instance.fail_runs_of_dead_processes`` does the same from every awb command that needs the
  ``gpu`` pool, for homes where no daemon runs.

Process start times guard against reused pids. A run of another host cannot be checked here and
is never called dead.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

HOST_TAG = "awb/host"
PID_TAG = "awb/pid"
PID_STARTED_TAG = "awb/pid_started"  # the process's start time (clock ticks since boot): pids are reused


def _process_started(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time), or None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming this process as the one that executes a run."""
    pid = os.getpid()
    return {HOST_TAG: platform.node(), PID_TAG: str(pid), PID_STARTED_TAG: _process_started(pid) or ""}


def process_alive(pid: int, started: str) -> bool:
    """Whether process ``pid`` of this host is alive and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _process_started(pid)
    return not (started and now is not None and now != started)  # same pid, another process


def dead_worker(tags: Mapping[str, str]) -> str | None:
    """Why the run with these tags has lost its process (a sentence), or None where its process is
    alive or cannot be checked from here (no tags yet, another host)."""
    pid_text = tags.get(PID_TAG, "")
    host = tags.get(HOST_TAG, "")
    if not pid_text.isdigit() or host != platform.node():
        return None
    if process_alive(int(pid_text), tags.get(PID_STARTED_TAG, "")):
        return None
    return f"the process {pid_text} on {host} that executed this run is gone (killed or crashed)"
