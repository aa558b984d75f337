"""Instance storages and instance class named by the repo's dagster*.yaml files.

Two settings make Dagster's bookkeeping cheap for single-run backfills of many partitions:

- *one planned event per asset and run* instead of one per partition
  (``supports_partition_subset_in_asset_materialization_planned_events``). Dagster's own
  failed/in-progress partition status only reads per-partition planned events, so
  ``PlannedSubsetStatusMixin`` also expands the subset events: a failed run still marks its
  partitions failed in the UI, a running one marks them in progress.
- *batched event writes* (``AwbInstance``: 100 events per write; PostgreSQL writes a batch with
  one INSERT). Dagster reads this from ``DAGSTER_EVENT_BATCH_SIZE`` per call; the instance class
  answers it from configuration instead, so no process environment is involved.

``EmbeddedPostgres*Storage`` keep runs, event logs and schedules in the home's embedded
PostgreSQL server (``instance_server``), which each storage holds while it is open.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import yaml
from dagster._serdes import ConfigurableClassData  # the custom-storage contract; no public name
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_config, pg_url_from_config

from awb_dagster.instance_server import EmbeddedPostgres
from awb_dagster.paths import HomePaths, resolve_home
from awb_dagster.run_workers import PID_TAG, process_tags

EVENT_BATCH_SIZE = 100
EVENT_PAGE = 10_000  # the event log refuses more records per call


def embedded_server(home: str | None) -> EmbeddedPostgres:
    """The server of ``home`` (default ``$AWB_HOME``, else ``.awb/`` in the working directory)."""
    return EmbeddedPostgres(HomePaths(resolve_home(home)).dagster_home / "postgres")


class PlannedSubsetStatusMixin:
    """Event log storage that plans one event per asset and run and still reports the
    partitions of failed and running runs."""

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        return True

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key: dg.AssetKey, after_storage_id: int | None = None
    ) -> Mapping[str, tuple[str, int]]:
        attempts = {
            partition: attempt
            for partition, attempt in super()  # type: ignore[misc]
            .get_latest_asset_partition_materialization_attempts_without_materializations(asset_key, after_storage_id)
            .items()
            if partition is not None
        }
        planned = self._subset_planned(asset_key, after_storage_id)
        if not planned:
            return attempts
        materialized = self.get_latest_storage_id_by_partition(  # type: ignore[attr-defined]
            asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        for partition, (run_id, storage_id) in planned.items():
            if materialized.get(partition, -1) > storage_id:
                continue
            known = attempts.get(partition)
            if known is None or known[1] < storage_id:
                attempts[partition] = (run_id, storage_id)
        return attempts

    def _subset_planned(self, asset_key: dg.AssetKey, after_storage_id: int | None) -> dict[str, tuple[str, int]]:
        """Partition → (run id, storage id) of the newest planned event that names it in a subset."""
        planned: dict[str, tuple[str, int]] = {}
        cursor = after_storage_id
        while True:
            records = self.get_event_records(  # type: ignore[attr-defined]
                dg.EventRecordsFilter(
                    event_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=asset_key, after_cursor=cursor
                ),
                limit=EVENT_PAGE,
                ascending=True,
            )
            for record in records:
                data = record.event_log_entry.dagster_event.event_specific_data
                subset = getattr(data, "partitions_subset", None)
                if subset is not None:
                    for partition in subset.get_partition_keys():
                        planned[partition] = (record.run_id, record.storage_id)
            if len(records) < EVENT_PAGE:
                return planned
            cursor = records[-1].storage_id


class _EmbeddedServerMixin:
    """Holds the home's embedded server while the storage is open (``dispose`` or garbage
    collection lets go; the last holder stops the server)."""

    def _hold(self, home: str | None, inst_data: ConfigurableClassData | None) -> tuple[str, ConfigurableClassData | None]:
        """Start or join the server; returns its URL and ``inst_data`` naming the resolved home,
        so processes started from this instance's ref (run workers) use the same server."""
        resolved = str(resolve_home(home))
        server = embedded_server(resolved)
        url = server.acquire()
        self._release = weakref.finalize(self, server.release)
        if inst_data is not None:
            inst_data = ConfigurableClassData(inst_data.module_name, inst_data.class_name, yaml.safe_dump({"home": resolved}))
        return url, inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"home": dg.Field(dg.StringSource, is_required=False)}

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._release()


class EmbeddedPostgresRunStorage(_EmbeddedServerMixin, PostgresRunStorage):
    def __init__(self, home: str | None = None, inst_data: ConfigurableClassData | None = None):
        url, inst_data = self._hold(home, inst_data)
        super().__init__(postgres_url=url, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> EmbeddedPostgresRunStorage:
        return cls(home=config_value.get("home"), inst_data=inst_data)


class EmbeddedPostgresEventLogStorage(_EmbeddedServerMixin, PlannedSubsetStatusMixin, PostgresEventLogStorage):
    def __init__(self, home: str | None = None, inst_data: ConfigurableClassData | None = None):
        url, inst_data = self._hold(home, inst_data)
        super().__init__(postgres_url=url, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> EmbeddedPostgresEventLogStorage:
        return cls(home=config_value.get("home"), inst_data=inst_data)


class EmbeddedPostgresScheduleStorage(_EmbeddedServerMixin, PostgresScheduleStorage):
    """Holds the server only while it connects and creates its tables: Dagster never disposes
    schedule storage, and the run and event log storages of the same instance hold the server."""

    def __init__(self, home: str | None = None, inst_data: ConfigurableClassData | None = None):
        url, inst_data = self._hold(home, inst_data)
        try:
            super().__init__(postgres_url=url, inst_data=inst_data)
        finally:
            self._release()

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> EmbeddedPostgresScheduleStorage:
        return cls(home=config_value.get("home"), inst_data=inst_data)


class TeamPostgresEventLogStorage(PlannedSubsetStatusMixin, PostgresEventLogStorage):
    """dagster-postgres's event log on an external server (``DAGSTER_PG_*``), with subset planned events."""

    @classmethod
    def config_type(cls):
        return pg_config()

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> TeamPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )


class AwbInstance(dg.DagsterInstance):
    """The instance class of every awb instance yaml: writes events in batches of
    ``EVENT_BATCH_SIZE`` (Dagster's own switch for this is the ``DAGSTER_EVENT_BATCH_SIZE``
    variable; the instance answers it instead, so no process environment is involved)."""

    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str):
        # Dagster asks a custom instance class for its storage defaults; these are Dagster's own.
        from dagster._core.instance.ref import InstanceRef

        return InstanceRef.config_defaults(base_dir)

    def _get_event_batch_size(self) -> int:
        return EVENT_BATCH_SIZE

    def handle_new_event(self, event: Any, *, batch_metadata: Any = None) -> None:
        """Store the event; when it is a run's start, name the process reporting it (the run's
        worker) in the run's tags unless the launcher did (``awb_dagster.run_workers``), so a run
        whose worker dies is detected whoever launched it."""
        super().handle_new_event(event, batch_metadata=batch_metadata)
        dagster_event = event.dagster_event
        if dagster_event is None or dagster_event.event_type != dg.DagsterEventType.RUN_START:
            return
        run = self.get_run_by_id(event.run_id)
        if run is not None and PID_TAG not in run.tags:
            self.add_run_tags(event.run_id, process_tags())

    # Dynamic partition keys, held while a step attaches its per-partition metadata
    # (:meth:`dynamic_partitions_held`). Dagster's add_asset_metadata re-resolves the step's
    # whole range on every call: without this, several queries per partition, each on a new
    # connection (about 50 ms a partition on the embedded server). Outside that block every
    # read goes to the database, so partitions another process adds are seen at once.
    @contextmanager
    def dynamic_partitions_held(self) -> Iterator[None]:
        self.__dict__["_awb_dynamic_partitions"] = {}
        try:
            yield
        finally:
            self.__dict__.pop("_awb_dynamic_partitions", None)

    def _held(self, partitions_def_name: str) -> tuple[tuple[str, ...], frozenset[str]] | None:
        held = self.__dict__.get("_awb_dynamic_partitions")
        if held is None:
            return None
        if partitions_def_name not in held:
            keys = tuple(super().get_dynamic_partitions(partitions_def_name))
            held[partitions_def_name] = (keys, frozenset(keys))
        return held[partitions_def_name]

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        held = self._held(partitions_def_name)
        return list(held[0]) if held is not None else super().get_dynamic_partitions(partitions_def_name)

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        held = self._held(partitions_def_name)
        if held is None:
            return super().has_dynamic_partition(partitions_def_name, partition_key)
        return partition_key in held[1]
