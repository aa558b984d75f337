"""The code location: assets, resources and sensors, assembled. Configuration comes from
the environment so the same module serves `awb demo`, `awb ui` and `dagster dev`:
``AWB_HOME`` (state folder), ``AWB_DEVICE``/``AWB_DTYPE``/``AWB_BATCH_SIZE``/
``AWB_DECODE_WORKERS``/``AWB_JPEG_DRAFT`` (torch resource),
``HF_ENDPOINT``/``HF_TOKEN``/``HF_HUB_OFFLINE`` (hub), ``AWB_LICENSE_OPT_IN`` (comma list),
``AWB_AUTOMATION_CRON`` (family re-materialization, default nightly) and
``AWB_PIN_STATUS_CRON`` (hub drift check, default daily)."""

from __future__ import annotations

import os

import dagster as dg

from awb_dagster.assets import EMBEDDING_ASSETS, plate_and_pin_sensor, plate_catalog, plate_files
from awb_dagster.assets.atlas import ATLAS_ASSETS
from awb_dagster.assets.drift import pin_drift_report
from awb_dagster.assets.automation import DEFAULT_AUTOMATION_CRON, automation_sensor, with_embedding_automation
from awb_dagster.assets.pins import DEFAULT_PIN_STATUS_CRON, pin_status, pin_status_schedule
from awb_dagster.assets.segmentation import sam_masks
from awb_dagster.assets.semantic import with_semantic_automation
from awb_dagster.paths import resolve_home
from awb_dagster.assets.regions import segment_embeddings, tile_embeddings
from awb_dagster.runner import SAM_MASKS_JOB, SEMANTIC_JOB, SEGMENT_EMBEDDINGS_JOB, TILE_EMBEDDINGS_JOB, family_job_name
from awb_dagster.resources import AwbHome, HubResource, InstrumentsResource, TorchResource


def build_resources(
    *,
    home: str | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    decode_workers: int | None = None,
    jpeg_draft: bool | None = None,
    license_opt_in: list[str] | None = None,
) -> dict[str, dg.ConfigurableResource]:
    env = os.environ
    home_resource = AwbHome(home=str(resolve_home(home)))
    hub = HubResource(
        endpoint=endpoint or env.get("HF_ENDPOINT"),
        token=env.get("HF_TOKEN"),
        offline=offline if offline is not None else env.get("HF_HUB_OFFLINE", "0") in ("1", "true", "yes"),
    )
    torch_settings = TorchResource(
        device=device or env.get("AWB_DEVICE", "auto"),
        dtype=dtype or env.get("AWB_DTYPE", "auto"),
        batch_size=batch_size or int(env.get("AWB_BATCH_SIZE", "32")),
        decode_workers=decode_workers or int(env.get("AWB_DECODE_WORKERS", "4")),
        jpeg_draft=jpeg_draft if jpeg_draft is not None else env.get("AWB_JPEG_DRAFT", "1") not in ("0", "false", "no"),
    )
    opt_in = license_opt_in if license_opt_in is not None else [
        item.strip() for item in env.get("AWB_LICENSE_OPT_IN", "").split(",") if item.strip()
    ]
    return {
        "home": home_resource,
        "hub": hub,
        "torch_settings": torch_settings,
        "instruments": InstrumentsResource(
            home=home_resource, hub=hub, torch=torch_settings, license_opt_in=opt_in
        ),
    }


def build_definitions(
    *, automation_cron: str | None = None, pin_status_cron: str | None = None, **resource_overrides
) -> dg.Definitions:
    resources = build_resources(**resource_overrides)
    lock = resources["home"].paths.lock
    cron = automation_cron or os.environ.get("AWB_AUTOMATION_CRON", DEFAULT_AUTOMATION_CRON)
    family_assets = with_embedding_automation(EMBEDDING_ASSETS, lock, cron)
    jobs = [
        dg.define_asset_job(family_job_name(asset.key.path[-1].removesuffix("_embeddings")), selection=[asset])
        for asset in family_assets
    ]
    # Segmentation: the same automation condition as the embedding families, and its own job.
    segmentation_assets = with_embedding_automation((sam_masks,), lock, cron)
    jobs += [dg.define_asset_job(SAM_MASKS_JOB, selection=segmentation_assets)]
    # Semantic segmentation (Mask2Former): the same automation for the pins the license gate admits
    # (its `other` license needs the opt-in), its own job; kept apart from sam_masks.
    semantic_assets = with_semantic_automation(lock, cron, resources["instruments"].license_opt_in)
    jobs += [dg.define_asset_job(SEMANTIC_JOB, selection=semantic_assets)]
    # Region embeddings: the families' condition; a segment key needs both of its pins automated,
    # and new sam_masks materializations count like changed plate bytes.
    tiles = with_embedding_automation((tile_embeddings,), lock, cron)
    segments = with_embedding_automation((segment_embeddings,), lock, cron, also_updated=("sam_masks",))
    region_assets = [*segments, *tiles]
    jobs += [
        dg.define_asset_job(SEGMENT_EMBEDDINGS_JOB, selection=segments),
        dg.define_asset_job(TILE_EMBEDDINGS_JOB, selection=tiles),
    ]
    return dg.Definitions(
        assets=[plate_catalog, plate_files, pin_status, *family_assets, *segmentation_assets, *semantic_assets, *region_assets, *ATLAS_ASSETS, pin_drift_report],
        jobs=jobs,
        schedules=[
            pin_status_schedule(pin_status_cron or os.environ.get("AWB_PIN_STATUS_CRON", DEFAULT_PIN_STATUS_CRON))
        ],
        sensors=[plate_and_pin_sensor, automation_sensor],
        resources=resources,
    )


defs = build_definitions()
