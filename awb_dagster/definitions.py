"""The code location: assets, resources and sensors, assembled. Configuration comes from
the environment so the same module serves `awb demo`, `awb ui` and `dagster dev`:
``AWB_HOME`` (state folder), ``AWB_DEVICE``/``AWB_DTYPE``/``AWB_BATCH_SIZE``/
``AWB_DECODE_WORKERS``/``AWB_JPEG_DRAFT``/``AWB_DECODER`` (torch resource),
``HF_ENDPOINT``/``HF_TOKEN``/``HF_HUB_OFFLINE`` (hub), ``AWB_LICENSE_OPT_IN`` (comma list),
``AWB_AUTOMATION_CRON`` (family re-materialization, default nightly) and
``AWB_PIN_STATUS_CRON`` (hub drift check, default daily)."""

from __future__ import annotations

import os

import dagster as dg

from awb_dagster.assets import plate_and_pin_sensor, plate_catalog, plate_files
from awb_dagster.assets.atlas import ATLAS_ASSETS
from awb_dagster.assets.automation import DEFAULT_AUTOMATION_CRON, automation_sensor, with_family_automation
from awb_dagster.assets.drift import pin_drift_report
from awb_dagster.assets.factory import build_family_asset, job_name
from awb_dagster.assets.pins import DEFAULT_PIN_STATUS_CRON, pin_status, pin_status_schedule
from awb_dagster.assets.probe_axes import probe_axes
from awb_dagster.producers import producers_for
from awb_dagster.registry.model import Registry
from awb_dagster.resources.settings import build_resources


def build_definitions(
    *, automation_cron: str | None = None, pin_status_cron: str | None = None, **resource_overrides
) -> dg.Definitions:
    resources = build_resources(**resource_overrides)
    lock = resources["home"].paths.lock
    cron = automation_cron or os.environ.get("AWB_AUTOMATION_CRON", DEFAULT_AUTOMATION_CRON)
    opt_in = tuple(resources["instruments"].license_opt_in)
    # One asset and one job per producer of the roster's families, all on the family automation:
    # missing or changed (plate, pin) partitions on the cron, for pins not retired; license-gated
    # families only for the pins the gate admits; upstream families' new materializations count
    # like changed plate bytes (segments: a new mask set).
    family_assets = [
        with_family_automation(
            build_family_asset(producer), lock, cron, also_updated=producer.upstream,
            license_opt_in=opt_in if producer.license_gated else None,
        )  # fmt: skip
        for producer in producers_for(entry.instrument.family for entry in Registry.load(lock_path=lock).entries)
    ]
    jobs = [dg.define_asset_job(job_name(asset.key.path[-1]), selection=[asset]) for asset in family_assets]
    return dg.Definitions(
        assets=[plate_catalog, plate_files, pin_status, *family_assets, *ATLAS_ASSETS, pin_drift_report, probe_axes],
        jobs=jobs,
        schedules=[
            pin_status_schedule(pin_status_cron or os.environ.get("AWB_PIN_STATUS_CRON", DEFAULT_PIN_STATUS_CRON))
        ],
        sensors=[plate_and_pin_sensor, automation_sensor],
        resources=resources,
    )


defs = build_definitions()
