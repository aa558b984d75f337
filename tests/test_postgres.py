"""The team-deployment instance: dagster.postgres.yaml against a real PostgreSQL server.

The server comes from ``DAGSTER_PG_HOST/PORT/USER/PASSWORD/DB`` (``.ci/run`` installs and starts
one on loopback and exports them); the test skips only when no server can be reached. It runs in
a database of its own, created and dropped here when the role may create databases.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest

from awb_dagster.assets.plates import scan_plates, sync_partitions
from awb_dagster.constants import GPU_POOL
from awb_dagster.definitions import build_definitions
import yaml

from awb_dagster.instance import (
    INSTANCE_YAML,
    POSTGRES_INSTANCE_YAML,
    SQLITE_INSTANCE_YAML,
    home_instance_config,
    instance_yaml,
    open_instance,
    prepare_dagster_home,
)
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_family

PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
PLATES = ("audubon_p001_wild-turkey.jpg", "AWKWARD_grayscale_haeckel_stammbaum_1866.png")
PROVENANCE_KEYS = ("record_id", "plate_sha256", "model_sha", "preprocess_tag", "artifact_sha256", "dagster_run_id")


def _connect(database: str):
    import psycopg2

    connection = psycopg2.connect(
        host=os.environ["DAGSTER_PG_HOST"],
        port=int(os.environ["DAGSTER_PG_PORT"]),
        user=os.environ["DAGSTER_PG_USER"],
        password=os.environ["DAGSTER_PG_PASSWORD"],
        dbname=database,
        connect_timeout=5,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def postgres_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database on the configured server (``DAGSTER_PG_DB`` points at it meanwhile)."""
    import psycopg2

    missing = [name for name in PG_ENV if not os.environ.get(name)]
    if missing:
        pytest.skip(f"no PostgreSQL server configured ({', '.join(missing)} unset; .ci/run starts one)")
    try:
        admin = _connect(os.environ["DAGSTER_PG_DB"])
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at {os.environ['DAGSTER_PG_HOST']}:{os.environ['DAGSTER_PG_PORT']}: {exc}")
    configured = os.environ["DAGSTER_PG_DB"]
    name = f"awb_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.errors.InsufficientPrivilege:
        name = configured  # a role without CREATEDB: share the configured database
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    try:
        yield name
    finally:
        if name != configured:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        (None, INSTANCE_YAML),
        ("dagster.sqlite.yaml", SQLITE_INSTANCE_YAML),
        ("dagster.postgres.yaml", POSTGRES_INSTANCE_YAML),
        (str(POSTGRES_INSTANCE_YAML), POSTGRES_INSTANCE_YAML),
    ],
)
def test_awb_instance_yaml_chooses_the_instance_file(chosen, expected, tmp_path, monkeypatch):
    if chosen is None:
        monkeypatch.delenv("AWB_INSTANCE_YAML", raising=False)
    else:
        monkeypatch.setenv("AWB_INSTANCE_YAML", chosen)
    assert instance_yaml() == expected
    dagster_home = prepare_dagster_home(HomePaths(tmp_path))
    written = yaml.safe_load((dagster_home / "dagster.yaml").read_text())
    assert written == home_instance_config(expected, HomePaths(tmp_path))
    assert written["instance_class"]["class"] == "AwbInstance"
    assert "DAGSTER_HOME" not in os.environ or os.environ["DAGSTER_HOME"] != str(dagster_home)


def test_a_missing_instance_yaml_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("AWB_INSTANCE_YAML", "dagster.nosuch.yaml")
    with pytest.raises(FileNotFoundError, match="dagster.nosuch.yaml.*AWB_INSTANCE_YAML"):
        prepare_dagster_home(HomePaths(tmp_path))


def test_family_materializes_into_postgres(loopback_hub, postgres_db, tmp_path, monkeypatch):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from awb_dagster.instance_storage import TeamPostgresEventLogStorage

    monkeypatch.setenv("AWB_INSTANCE_YAML", "dagster.postgres.yaml")
    paths = HomePaths(tmp_path / "home")
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    for plate in PLATES:
        shutil.copy(SAMPLE_PLATES_DIR / plate, plates_dir / plate)
    lock = PinLock.load(paths.lock)
    registry = Registry.load(lock_path=paths.lock)
    pin = capture_pin(registry.get("awb-demo/tiny-dinov2").instrument, endpoint=loopback_hub.endpoint)
    lock.add(pin)
    lock.save(paths.lock)
    resource = AwbHome(home=str(paths.root))
    catalog, result = scan_plates(resource, [plates_dir])
    assert not result.rejected and len(catalog.plates) == 2

    instance = open_instance(paths)
    try:
        assert yaml.safe_load((paths.dagster_home / "dagster.yaml").read_text()) == yaml.safe_load(
            POSTGRES_INSTANCE_YAML.read_text()
        )
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, TeamPostgresEventLogStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1
        sync_partitions(instance, resource)
        defs = build_definitions(home=str(paths.root), endpoint=loopback_hub.endpoint, offline=False, batch_size=4)
        runs = materialize_family(defs, instance, "dinov2", pin.key)
        assert [run.success for run in runs] == [True]
        records = instance.fetch_materializations(dg.AssetKey("dinov2_embeddings"), limit=10).records
        assert {record.partition_key for record in records} == {f"{pin.key}|{plate}" for plate in catalog.plates}
        for record in records:
            metadata = record.asset_materialization.metadata
            assert all(key in metadata for key in PROVENANCE_KEYS), sorted(metadata)
            assert metadata["dagster_run_id"].value == runs[0].dagster_run_id
        checks = instance.all_logs(runs[0].dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        assert checks and all(e.dagster_event.event_specific_data.passed for e in checks)
    finally:
        instance.dispose()

    # The events are rows of the PostgreSQL database, not of a SQLite file under the home.
    with _connect(postgres_db) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (runs[0].dagster_run_id,),
        )
        assert cursor.fetchone()[0] == 2
    assert not list(paths.dagster_home.rglob("*.db")), "no SQLite storage beside PostgreSQL"
