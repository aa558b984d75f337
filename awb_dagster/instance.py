"""The Dagster instance of a home: ``<home>/dagster`` with one of the repo's instance yamls.

``dagster.yaml`` (default) keeps runs and event logs in SQLite under the home;
``dagster.postgres.yaml`` keeps them in PostgreSQL (``DAGSTER_PG_*``). ``AWB_INSTANCE_YAML``
names the file to use: a path, absolute or relative to the repo root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from awb_dagster.constants import GPU_POOL
from awb_dagster.paths import REPO_ROOT, HomePaths

INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
POSTGRES_INSTANCE_YAML = REPO_ROOT / "dagster.postgres.yaml"
INSTANCE_YAML_ENV = "AWB_INSTANCE_YAML"
GPU_POOL_LIMIT = 1


def instance_yaml() -> Path:
    """``$AWB_INSTANCE_YAML`` (relative paths from the repo root), else the SQLite dagster.yaml."""
    chosen = os.environ.get(INSTANCE_YAML_ENV)
    return REPO_ROOT / Path(chosen).expanduser() if chosen else INSTANCE_YAML


def prepare_dagster_home(paths: HomePaths) -> Path:
    """Create ``<home>/dagster`` with the chosen instance yaml as its dagster.yaml and export
    DAGSTER_HOME."""
    source = instance_yaml()
    dagster_home = paths.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} is missing: set {INSTANCE_YAML_ENV} to an instance yaml (dagster.yaml or "
            "dagster.postgres.yaml of the checkout), and run awb from a checkout installed with `pip install -e .`"
        )
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def open_instance(paths: HomePaths) -> dg.DagsterInstance:
    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(paths)))
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, GPU_POOL_LIMIT)
    return instance
