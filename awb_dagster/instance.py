"""The Dagster instance of a home: ``<home>/dagster`` with the repo's dagster.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from awb_dagster.constants import GPU_POOL
from awb_dagster.paths import REPO_ROOT, HomePaths

INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
GPU_POOL_LIMIT = 1


def prepare_dagster_home(paths: HomePaths) -> Path:
    """Create ``<home>/dagster`` with the project's dagster.yaml and export DAGSTER_HOME."""
    dagster_home = paths.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    if not INSTANCE_YAML.is_file():
        raise FileNotFoundError(
            f"{INSTANCE_YAML} is missing: run awb from a checkout installed with `pip install -e .`"
        )
    if not target.is_file() or target.read_bytes() != INSTANCE_YAML.read_bytes():
        shutil.copyfile(INSTANCE_YAML, target)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def open_instance(paths: HomePaths) -> dg.DagsterInstance:
    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(paths)))
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, GPU_POOL_LIMIT)
    return instance
