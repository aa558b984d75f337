"""One factory turns a producer (awb_dagster/producers/) into its plate × pin asset: two dynamic
partition dimensions, a single-run backfill policy (one run, one model load per pin over all
plates) or, with ``AWB_MAX_PARTITIONS_PER_RUN=N``, runs of at most N contiguous partitions (one
model load each, so N GPUs share a backfill; each run leases a card, resources/devices.py), the
``gpu`` pool, blocking checks, run config from the producer's settings, and the engine's loop as
the body. Adding a family is a producer, roster entries and a demo checkpoint.

Dagster 1.13 evaluates the checks once per step, not per partition: a range run (single-run
backfill) records one evaluation per check with no partition, and AssetCheckResult cannot name
one. So each result covers every partition of the step and its metadata names the failing
records and files.
"""

import dataclasses
import typing
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import create_model

from awb_dagster.constants import GPU_POOL, PLATE_DIMENSION, PLATE_FILES_KEY
from awb_dagster.engine import Json, Markdown, Table, run_step
from awb_dagster.engine.core import StreamSettings
from awb_dagster.engine.metadata import force_requested, partition_metadata
from awb_dagster.engine.producer import Producer, StepInputs
from awb_dagster.instance_storage import AwbInstance
from awb_dagster.partitions import partitions_for, split_keys
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.resources import AwbHome, InstrumentsResource, TorchResource
from awb_dagster.resources.devices import step_resources
from awb_dagster.resources.settings import max_partitions_per_run

_MAX_FAILURE_ROWS = 100  # rows in a check's metadata table; `failing` counts all


def job_name(asset_name: str) -> str:
    """The job of one family asset (``clip_embeddings`` -> ``clip_embeddings_job``)."""
    return f"{asset_name}_job"


def _config_field(annotation: Any, default: Any) -> tuple[Any, Any]:
    """A settings field as a Dagster config field (tuples become lists: config has no tuples)."""
    if typing.get_origin(annotation) is tuple:
        return list[typing.get_args(annotation)[0]], list(default)
    return annotation, default


def config_class(producer: Producer) -> type[dg.Config]:
    """The asset's run config: ``force`` plus every field of the producer's settings."""
    hints = typing.get_type_hints(producer.settings_type)
    fields = {
        field.name: _config_field(hints[field.name], field.default) for field in dataclasses.fields(producer.settings_type)
    }
    name = "".join(part.title() for part in producer.asset_name.split("_")) + "Config"
    return create_model(
        name,
        __base__=dg.Config,
        __doc__=f"Run config of {producer.asset_name}: `force` recomputes (plate, pin) pairs already in a "
        f"sealed run; the rest are {producer.settings_type.__name__} (in the preprocess tag and manifest).",
        force=(bool, False),
        **fields,
    )


def settings_from(producer: Producer, config: dg.Config) -> Any:
    values = {}
    for field in dataclasses.fields(producer.settings_type):
        value = getattr(config, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return producer.settings_type(**values)


def dagster_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The engine's typed values as Dagster metadata values the UI renders."""
    converted = {}
    for key, value in metadata.items():
        if isinstance(value, Path):
            value = dg.MetadataValue.path(str(value))
        elif isinstance(value, Markdown):
            value = dg.MetadataValue.md(value.text)
        elif isinstance(value, Json):
            value = dg.MetadataValue.json(value.value)
        elif isinstance(value, Table):
            value = dg.MetadataValue.table(
                [dg.TableRecord(row) for row in value.rows], schema=dg.TableSchema.from_name_type_dict(value.columns)
            )
        converted[key] = value
    return converted


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """One asset check result over this step's partitions; the description names the first ten
    failing records (or files), the metadata table the first hundred, ``failing`` counts all."""
    failures = outcome.failures
    rows = [
        dg.TableRecord(
            {"artifact": f.artifact, "record_id": f.record_id, "plate_id": f.plate_id, "detail": f.detail}
        )
        for f in failures[:_MAX_FAILURE_ROWS]
    ]
    named = sorted({f.record_id or f.artifact for f in failures})
    listed = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        description=f"{len(failures)} of {outcome.checked} failing: {listed}" if failures else None,
        metadata={
            "checked": outcome.checked,
            "failing": len(failures),
            "failures": dg.MetadataValue.table(
                rows,
                schema=dg.TableSchema.from_name_type_dict(
                    {"artifact": "string", "record_id": "string", "plate_id": "string", "detail": "string"}
                ),
            ),
        },
    )


def _partition_keys_held(instance: dg.DagsterInstance) -> AbstractContextManager:
    """Dagster re-reads the step's partition range on every per-partition metadata call; awb's
    instance holds the dynamic partition keys for the length of the loop (other instances,
    such as a test's, read them each time)."""
    return instance.dynamic_partitions_held() if isinstance(instance, AwbInstance) else nullcontext()


def _deps(producer: Producer) -> list:
    """Upstream family assets map plate to plate; an upstream dimension left out of the mapping
    (its pins) maps to all of its keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # MultiPartitionMapping is beta in Dagster 1.13
        by_plate = dg.MultiPartitionMapping(
            {PLATE_DIMENSION: dg.DimensionPartitionMapping(PLATE_DIMENSION, dg.IdentityPartitionMapping())}
        )
    upstream = [dg.AssetDep(name, partition_mapping=by_plate) for name in producer.upstream]
    return [*upstream, "plate_catalog", PLATE_FILES_KEY]


def family_backfill_policy(max_per_run: int | None) -> dg.BackfillPolicy:
    """One run per backfill (None), or runs of at most ``max_per_run`` contiguous partitions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in Dagster 1.13
        if max_per_run is None:
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(max_partitions_per_run=max_per_run)


def build_family_asset(producer: Producer, backfill_policy: dg.BackfillPolicy | None = None) -> dg.AssetsDefinition:
    """The plate × pin asset of ``producer``; its backfill policy from ``AWB_MAX_PARTITIONS_PER_RUN``
    unless one is given."""
    policy = backfill_policy or family_backfill_policy(max_partitions_per_run())
    partitions_def = partitions_for(producer.pins_dimension)
    config_type = config_class(producer)

    def materialize(
        context: dg.AssetExecutionContext,
        config,
        home: AwbHome,
        instruments: InstrumentsResource,
        torch_settings: TorchResource,
    ) -> dg.MaterializeResult:
        with step_resources(home, instruments, torch_settings, f"run {context.run_id}", context.log.info) as placed:
            instruments, torch_settings = placed
            inputs = StepInputs(instruments, torch_settings, home.store(), home.catalog(), home.max_pixels)
            result = run_step(
                producer,
                settings_from(producer, config),
                split_keys(partitions_def, context.partition_keys),
                inputs,
                dagster_run_id=context.run_id,
                force=config.force or force_requested(context.run.tags),
                stream=StreamSettings(
                torch_settings.decode_workers, torch_settings.prefetch_batches, torch_settings.seal_every or None
            ),
                log=context.log.info,
            )
        with _partition_keys_held(context.instance):
            for report in result.reports:
                metadata = partition_metadata(result.sessions[report.pin_key], report, home.home, context.run_id)
                context.add_asset_metadata(dagster_metadata(metadata), partition_key=report.partition_key)
        if result.problems:
            raise dg.Failure(
                description=f"{len(result.problems)} plate(s) could not be processed by {producer.asset_name}; the "
                "others are sealed and a retry skips them:\n" + "\n".join(result.problems),
            )
        outcomes = producer.checks(inputs.store, inputs.catalog, result.pairs, result.sessions)
        selected = {key.name for key in context.selected_asset_check_keys}
        return dg.MaterializeResult(
            metadata={"model_loads": instruments.loads, "sealed_runs": ", ".join(result.sealed_runs) or "none"},
            check_results=[check_result(outcome) for name, outcome in outcomes.items() if name in selected],
        )

    materialize.__annotations__["config"] = config_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in Dagster 1.13
        return dg.asset(
            name=producer.asset_name,
            description=producer.description,
            partitions_def=partitions_def,
            backfill_policy=policy,
            pool=GPU_POOL,
            group_name=producer.group,
            code_version=producer.code_version,
            kinds={"pytorch", "parquet"},
            deps=_deps(producer),
            check_specs=[
                dg.AssetCheckSpec(name, asset=producer.asset_name, description=description, blocking=True)
                for name, description in producer.check_descriptions.items()
            ],
        )(materialize)
