"""The Dagster instance of a home: ``<home>/dagster`` with one of the repo's instance yamls.

``dagster.yaml`` (default) keeps runs, event logs and schedules in the home's embedded
PostgreSQL server (``<home>/dagster/postgres``, started by the first process that opens the
instance and stopped by the last); ``dagster.sqlite.yaml`` keeps them in SQLite files under the
home; ``dagster.postgres.yaml`` in an external PostgreSQL (``DAGSTER_PG_*``).
``AWB_INSTANCE_YAML`` names the file to use: a path, absolute or relative to the repo root.

The chosen yaml is written to ``<home>/dagster/dagster.yaml`` with this home filled in (the
embedded server's ``home``, SQLite's ``base_dir``), so every Dagster process started with
``DAGSTER_HOME=<home>/dagster`` (``dagster_env``) opens the same instance. Nothing here touches
the process environment.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml

from awb_dagster.constants import GPU_POOL
from awb_dagster.paths import HOME_ENV, REPO_ROOT, HomePaths
from awb_dagster.run_workers import HOST_TAG, PID_TAG, dead_worker, process_tags

INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
SQLITE_INSTANCE_YAML = REPO_ROOT / "dagster.sqlite.yaml"
POSTGRES_INSTANCE_YAML = REPO_ROOT / "dagster.postgres.yaml"
INSTANCE_YAML_ENV = "AWB_INSTANCE_YAML"
GPU_POOL_LIMIT = 1
GPU_SLOTS_ENV = "AWB_GPU_SLOTS"  # family steps at once: the number of cards (a run leases one)
STORAGE_MODULE = "awb_dagster.instance_storage"
STORAGE_KEYS = ("run_storage", "event_log_storage", "schedule_storage")


def instance_yaml() -> Path:
    """``$AWB_INSTANCE_YAML`` (relative paths from the repo root), else dagster.yaml (embedded PostgreSQL)."""
    chosen = os.environ.get(INSTANCE_YAML_ENV)
    return REPO_ROOT / Path(chosen).expanduser() if chosen else INSTANCE_YAML


def home_instance_config(source: Path, paths: HomePaths) -> dict:
    """The instance yaml ``source`` with ``paths`` filled in where it names the home."""
    config = yaml.safe_load(source.read_text()) or {}
    for key in STORAGE_KEYS:
        block = config.get(key)
        if isinstance(block, dict) and block.get("module") == STORAGE_MODULE and block["class"].startswith("EmbeddedPostgres"):
            block["config"] = {**(block.get("config") or {}), "home": str(paths.root)}
    sqlite = (config.get("storage") or {}).get("sqlite")
    if isinstance(sqlite, dict) and sqlite.get("base_dir") == {"env": "DAGSTER_HOME"}:
        sqlite["base_dir"] = str(paths.dagster_home)
    return config


def prepare_dagster_home(paths: HomePaths, source: Path | None = None) -> Path:
    """Create ``<home>/dagster`` with ``source`` (default ``instance_yaml()``), this home filled
    in, as its dagster.yaml; returns the folder (the DAGSTER_HOME of processes started for this home)."""
    source = source or instance_yaml()
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} is missing: set {INSTANCE_YAML_ENV} to an instance yaml (dagster.yaml, dagster.sqlite.yaml "
            "or dagster.postgres.yaml of the checkout), and run awb from a checkout installed with `pip install -e .`"
        )
    dagster_home = paths.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    text = f"# written by awb from {source}; edit that file instead\n" + yaml.safe_dump(
        home_instance_config(source, paths), sort_keys=False
    )
    if not target.is_file() or target.read_text() != text:
        partial = target.with_suffix(".yaml.tmp")
        partial.write_text(text)
        partial.replace(target)
    return dagster_home


def dagster_env(paths: HomePaths, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Dagster process of this home (webserver, daemon, ``dagster dev``):
    ``base`` (default: this process's environment) with ``DAGSTER_HOME`` and ``AWB_HOME`` set.
    Pass it as ``env=`` to the subprocess."""
    return {
        **(os.environ if base is None else base),
        "DAGSTER_HOME": str(prepare_dagster_home(paths)),
        HOME_ENV: str(paths.root),
    }


def gpu_pool_limit() -> int:
    """``$AWB_GPU_SLOTS`` (a whole number >= 1), else one ``gpu`` step at a time."""
    value = os.environ.get(GPU_SLOTS_ENV, "").strip()
    if not value:
        return GPU_POOL_LIMIT
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{GPU_SLOTS_ENV}={value!r}: expected the number of GPUs family steps may use at once (>= 1)")
    return int(value)


def open_instance(paths: HomePaths, source: Path | None = None) -> dg.DagsterInstance:
    """The home's instance, its ``gpu`` pool limited to one step (``$AWB_GPU_SLOTS`` steps). With
    the embedded PostgreSQL default the server runs while the instance is open: ``instance.dispose()`` (or
    ``home_instance``) lets go of it; otherwise it stops when the last holding process exits."""
    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(paths, source)))
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpu_pool_limit())
    return instance


@contextmanager
def home_instance(paths: HomePaths, source: Path | None = None) -> Iterator[dg.DagsterInstance]:
    """``open_instance`` as a context manager: the instance is disposed on exit, and the embedded
    server stops if no other process holds it."""
    instance = open_instance(paths, source)
    try:
        yield instance
    finally:
        instance.dispose()


# --- runs of dead processes --------------------------------------------------------------
# Every run names its process in tags (awb_dagster/run_workers.py). The daemon's run monitoring
# checks launched runs through AwbRunLauncher; runs that awb executes in its own process
# (`awb run`, `awb demo`) and homes without a daemon are covered here: a run whose process is
# gone is marked failed, its pool slots freed, by the next awb command and the plate sensor's tick.

_ACTIVE_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def fail_runs_of_dead_processes(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs that a process of this host executed and that process is
    gone (killed, crashed), and free their pool slots. Returns their run ids."""
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE_STATUSES, tags={HOST_TAG: platform.node()})):
        reason = dead_worker(run.tags)
        if reason is None:
            continue
        instance.report_run_failed(
            run,
            message=f"{reason}; awb marked the run failed and freed its pool slots. Its sealed chunks stay; "
            "a re-run completes the rest.",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed
