"""The code location loads and exposes the expected assets, partitions, jobs and sensor."""

from __future__ import annotations

import dagster as dg
import pytest

from awb_dagster.constants import GPU_POOL, PIN_DIMENSION, PLATE_DIMENSION
from awb_dagster.definitions import defs

FAMILIES = ("clip", "siglip", "dinov2", "aimv2", "biomedclip")


def test_asset_keys():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "plate_catalog", "plate_files", "pin_status", "clip_embeddings", "siglip_embeddings", "dinov2_embeddings",
        "atlas", "ensemble_disagreement", "topology_report", "sam_masks", "pin_drift_report",
        "segment_embeddings", "tile_embeddings", "semantic_segmentation", "convnet_embeddings",
        "wikiart_logits", "emotion_logits", "aesthetic_scores", "probe_axes", "ocr_text", "trocr_lines", "detr_detections", "grounding_dino_detections",
        "blip_captions", "blip2_captions", "qwen2_vl_captions", "foreground_masks",
        "florence2_caption", "florence2_detailed_caption", "florence2_more_detailed_caption", "florence2_ocr",
        "clip_zeroshot_labels", "siglip_zeroshot_labels",
        "box_masks",
        "aimv2_embeddings", "biomedclip_embeddings",
        "places365_logits", "aesthetic_image_scores",
    }  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_family_asset_shape(family: str):
    asset = defs.resolve_assets_def(f"{family}_embeddings")
    partitions = asset.partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    dims = {d.name: d.partitions_def for d in partitions.partitions_defs}
    assert set(dims) == {PLATE_DIMENSION, PIN_DIMENSION}
    assert dims[PLATE_DIMENSION].name == "plates"
    assert dims[PIN_DIMENSION].name == f"{family}_pins"
    assert all(isinstance(d, dg.DynamicPartitionsDefinition) for d in dims.values())
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    assert asset.op.pool == GPU_POOL
    assert asset.code_versions_by_key[asset.key]
    assert defs.resolve_job_def(f"{family}_embeddings_job")


def test_sensor_runs_by_default():
    sensor = defs.resolve_sensor_def("plate_and_pin_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


@pytest.mark.parametrize("family", FAMILIES)
def test_family_checks_are_blocking_and_automation_is_attached(family: str):
    asset = defs.resolve_assets_def(f"{family}_embeddings")
    specs = {spec.name: spec for spec in asset.check_specs}
    assert set(specs) == {
        "vectors_finite", "vector_dim_declared", "vector_l2_unit_norm", "record_ids_unique", "artifact_checksums",
    }  # fmt: skip
    assert all(spec.blocking for spec in specs.values())
    condition = asset.automation_conditions_by_key[asset.key]
    assert "cron" in condition.get_label() and "pin_not_retired" in str(condition.get_snapshot())
    assert {dep.asset_key.to_user_string() for dep in asset.specs_by_key[asset.key].deps} >= {"plate_files"}


def test_automation_sensor_and_pin_status_schedule_run_by_default():
    sensor = defs.resolve_sensor_def("awb_automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.emit_backfills
    schedule = defs.resolve_schedule_def("pin_status_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "0 6 * * *"


@pytest.mark.parametrize(
    ("yaml_name", "run_storage"),
    [("dagster.yaml", "EmbeddedPostgresRunStorage"), ("dagster.sqlite.yaml", "SqliteRunStorage")],
)
def test_instance_yamls_set_storage_and_gpu_pool(yaml_name, run_storage, tmp_path):
    from awb_dagster.instance import home_instance
    from awb_dagster.paths import REPO_ROOT, HomePaths

    with home_instance(HomePaths(tmp_path), REPO_ROOT / yaml_name) as instance:
        assert type(instance.run_storage).__name__ == run_storage
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1
        assert str(tmp_path / "dagster") in instance.root_directory


def test_sam_masks_shape():
    asset = defs.resolve_assets_def("sam_masks")
    dims = {d.name: d.partitions_def for d in asset.partitions_def.partitions_defs}
    assert dims[PLATE_DIMENSION].name == "plates" and dims[PIN_DIMENSION].name == "sam_pins"
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    assert asset.op.pool == GPU_POOL
    assert {spec.name for spec in asset.check_specs} == {"masks_decode_to_plate_size"}
    assert all(spec.blocking for spec in asset.check_specs)
    assert "pin_not_retired" in str(asset.automation_conditions_by_key[asset.key].get_snapshot())
    assert defs.resolve_job_def("sam_masks_job")
