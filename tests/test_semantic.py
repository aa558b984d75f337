"""Semantic segmentation: the pure helpers, the segmenter on the awkward shared plates, and
``semantic_segmentation`` end to end through Dagster with the tiny real-architecture Mask2Former
checkpoint from the loopback hub (license ``other``, so the opt-in gate is exercised too)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from awb_dagster.assets.plates import sync_partitions
from awb_dagster.producers.semantic import SEMANTIC_ASSET, artifact_relpaths
from awb_dagster.runner import job_name
from demo_homes import DemoHome, make_demo_home
from awb_dagster.definitions import build_definitions
from awb_dagster.demo.checkpoints import _ADE20K_FIRST_LABELS
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.plates.imaging import load_plate
from awb_dagster.instruments.semantic import (
    TRANSPARENT_LABEL,
    ClassMap,
    SegmenterSettings,
    SemanticSegmenter,
    class_map_dtype,
    class_map_png,
    decode_class_map,
    transparent_id,
)
from awb_dagster.partitions import pins_partitions
from awb_dagster.provenance.checks import (
    CLASS_AREAS_SUM_TO_PLATE,
    CLASS_MAP_DECODES_TO_PLATE_SIZE,
    check_class_map_pairs,
)
from awb_dagster.provenance.records import class_area_schema, record_id
from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.store import MANIFEST_NAME
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import LicenseOptInError, Registry
from awb_dagster.runner import materialize_pin_ranges

SHARED_PLATES = Path(__file__).resolve().parents[2] / "shared" / "plates"
MODEL = "awb-demo/tiny-mask2former"
OPT_IN = "demo-tiny-mask2former"


# --- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_labels", "dtype"), [(10, np.uint8), (150, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16)]
)
def test_class_map_dtype_leaves_the_transparent_id_free(num_labels, dtype):
    chosen = class_map_dtype(num_labels)
    assert chosen == np.dtype(dtype)
    assert transparent_id(chosen) == np.iinfo(dtype).max >= num_labels  # ids are 0..num_labels-1


def test_class_map_dtype_refuses_too_many_labels():
    with pytest.raises(InstrumentError, match="uint16"):
        class_map_dtype(65536)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_class_map_png_is_lossless(dtype):
    ids = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, (7, 13), dtype=np.int64).astype(dtype)
    decoded = decode_class_map(class_map_png(ids))
    assert decoded.dtype == np.dtype(dtype) and np.array_equal(decoded, ids)


def test_pixel_counts_most_first_and_sum_to_area():
    ids = np.array([[0, 0, 2], [2, 2, 255]], dtype=np.uint8)
    counts = ClassMap(ids, {0: "wall", 2: "sky", 255: TRANSPARENT_LABEL}).pixel_counts()
    assert list(counts.items()) == [(2, 3), (0, 2), (255, 1)] and sum(counts.values()) == ids.size


def test_artifact_relpaths_share_the_part_number():
    assert artifact_relpaths("class-areas-00003.parquet") == ("class-map-00003.png", "preview-00003.png")


def test_segmenter_settings_validation():
    with pytest.raises(InstrumentError, match="max_label_side"):
        SegmenterSettings(max_label_side=0)


# --- the segmenter ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def semantic_home(loopback_hub, tmp_path_factory) -> DemoHome:
    home = make_demo_home(loopback_hub, tmp_path_factory, "semantic", [MODEL], license_opt_in=[OPT_IN])
    pin = PinLock.load(home.paths.lock).find_key(home.pin_key)
    assert pin.license == "other"  # the demo repo carries the real model's flagged license
    assert home.added[pins_partitions["mask2former"].name] == [home.pin_key]  # the plate sensor registers them
    return home


@pytest.fixture(scope="module")
def segmenter(semantic_home) -> SemanticSegmenter:
    pin = PinLock.load(semantic_home.paths.lock).find_key(semantic_home.pin_key)
    instrument = Registry.load(lock_path=semantic_home.paths.lock).get(pin.model_id).instrument
    return SemanticSegmenter(instrument, pin, device="cpu", cache_dir=semantic_home.paths.hf_cache)


def test_labels_come_from_the_checkpoint_id2label(segmenter):
    assert segmenter.model.config.id2label == dict(enumerate(_ADE20K_FIRST_LABELS))
    assert segmenter.labels == {**dict(enumerate(_ADE20K_FIRST_LABELS)), 255: TRANSPARENT_LABEL}
    described = segmenter.describe()
    assert described["id2label"]["1"] == "building" and described["transparent_id"] == 255
    assert described["output_dtype"] == "uint8" and described["license"] == "other"


def test_preprocess_tag_names_everything_that_changes_pixels(segmenter):
    tag = segmenter.preprocess_tag
    for fragment in ("color=rgb-v1", "alpha=transparent-class-v1", "Mask2FormerImageProcessor", "div=32",
                     "longest_edge=256,shortest_edge=64", "norm=mean(0.485,0.456,0.406)", "batch=1",
                     "post_process_semantic_segmentation", "max-side=1024", "upscale=torch-nearest"):  # fmt: skip
        assert fragment in tag, fragment
    capped = SemanticSegmenter(segmenter.instrument, segmenter.pin, SegmenterSettings(max_label_side=64), device="cpu")
    assert capped.preprocess_tag != tag  # two different pipelines never share a tag


AWKWARD = sorted(p.name for p in SHARED_PLATES.glob("AWKWARD_*")) if SHARED_PLATES.is_dir() else []


@pytest.mark.skipif(not SHARED_PLATES.is_dir(), reason="../shared/plates is not present")
@pytest.mark.parametrize("name", AWKWARD)
def test_class_map_at_plate_size_on_awkward_plates(segmenter, name):
    path = SHARED_PLATES / name
    image, opaque = load_plate(path, sha256_file(path), max_pixels=10**9)
    class_map = segmenter.segment(image, opaque)
    assert class_map.class_ids.shape == (image.height, image.width)
    assert class_map.class_ids.dtype == np.uint8
    assert set(class_map.pixel_counts()) <= set(segmenter.labels)
    if opaque is not None:  # the transparent radiolarian: every transparent pixel and no other
        assert not opaque.all()
        assert np.array_equal(class_map.class_ids == 255, ~opaque)


def test_capped_class_map_is_upscaled_to_plate_size(segmenter):
    capped = SemanticSegmenter(segmenter.instrument, segmenter.pin, SegmenterSettings(max_label_side=16), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (41, 97, 3), dtype=np.uint8))
    assert capped.segment(image).class_ids.shape == (41, 97)


def test_a_processor_config_transformers_cannot_use_fails_at_load(segmenter, loopback_hub):
    from awb_dagster.demo.checkpoints import build_tiny_repo

    files = build_tiny_repo("mask2former")
    config = json.loads(files["preprocessor_config.json"])
    config["size"] = 64  # a legacy integer size without max_size: no longest edge to resize by
    files["preprocessor_config.json"] = json.dumps(config).encode()
    repo = "awb-test/legacy-size-mask2former"
    sha = loopback_hub.hub.add_commit(repo, files, license="other")
    instrument = replace(segmenter.instrument, id=repo)
    with pytest.raises(InstrumentError, match=rf"{repo}@{sha}: its image processor config cannot preprocess"):
        SemanticSegmenter(instrument, replace(segmenter.pin, model_id=repo, sha=sha), device="cpu")


def test_bfloat16_weights_give_a_class_map_at_plate_size(segmenter):
    # bfloat16 is the default on CUDA; the scores are post-processed in float32 all the same.
    half = SemanticSegmenter(segmenter.instrument, segmenter.pin, device="cpu", dtype="bfloat16")
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    class_map = half.segment(image)
    assert class_map.class_ids.shape == (50, 30) and set(class_map.pixel_counts()) <= set(half.labels)
    assert half.describe()["dtype"] == "bfloat16"


# --- the asset end to end --------------------------------------------------------------------


def materialize(home: DemoHome, defs: dg.Definitions | None = None, plate_ids=None, **config):
    return materialize_pin_ranges(
        defs or home.defs, home.instance, job_name(SEMANTIC_ASSET), SEMANTIC_ASSET, config, home.pin_key, plate_ids
    )


@pytest.fixture(scope="module")
def first_run(semantic_home):
    runs = materialize(semantic_home)
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_without_opt_in_the_run_fails_saying_how_to_opt_in(semantic_home, loopback_hub):
    registry = Registry.load(lock_path=semantic_home.paths.lock)
    with pytest.raises(LicenseOptInError, match=r"license 'other'.*license_opt_in: \[\"demo-tiny-mask2former\"\]"):
        registry.require_admitted(MODEL)
    defs = build_definitions(home=str(semantic_home.paths.root), endpoint=loopback_hub.endpoint, offline=False,
                             license_opt_in=[])  # fmt: skip
    plate_id = sorted(semantic_home.catalog.plates)[0]
    (run,) = materialize(semantic_home, defs, [plate_id])
    assert not run.success
    failures = semantic_home.instance.all_logs(run.dagster_run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    message = failures[0].dagster_event.step_failure_data.user_failure_data.description
    assert "needs an explicit opt-in: license 'other'" in message
    assert f"AWB_LICENSE_OPT_IN={OPT_IN}" in message


def test_class_maps_and_area_tables_are_sealed_per_plate(semantic_home, first_run):
    pairs = semantic_home.store.sealed_pairs(semantic_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(semantic_home.catalog.plates)
    for pair in pairs.values():
        plate = semantic_home.catalog.plates[pair.plate_id]
        table = pq.read_table(pair.artifact_path)
        assert table.schema == class_area_schema()
        rows = table.to_pylist()
        assert [r["record_id"] for r in rows] == list(pair.record_ids)
        class_ids = decode_class_map(pair.artifact_path.parent / rows[0]["class_map_path"])
        assert class_ids.shape == (plate.height, plate.width)
        assert sum(r["pixel_count"] for r in rows) == plate.width * plate.height
        assert sum(r["area_fraction"] for r in rows) == pytest.approx(1.0)
        counts = np.bincount(class_ids.ravel())
        for row in rows:
            assert row["pixel_count"] == counts[row["class_id"]] > 0
            expected_label = TRANSPARENT_LABEL if row["class_id"] == 255 else _ADE20K_FIRST_LABELS[row["class_id"]]
            assert row["label"] == expected_label
            assert row["record_id"] == record_id(
                plate_sha256=plate.sha256, model_sha=row["model_sha"], preprocess_tag=pair.preprocess_tag,
                scope="plate", region=f"class:{row['class_id']}",
            )  # fmt: skip
        assert (255 in counts.nonzero()[0]) == ("rgba" in pair.plate_id)


def test_manifest_lists_the_class_map_with_its_sha256(semantic_home, first_run):
    pair = next(iter(semantic_home.store.sealed_pairs(semantic_home.pin_key).values()))
    manifest = json.loads((pair.artifact_path.parent / MANIFEST_NAME).read_text())
    outputs = {o["path"]: o for o in manifest["outputs"]}
    row = pq.read_table(pair.artifact_path).to_pylist()[0]
    class_map = pair.artifact_path.parent / row["class_map_path"]
    assert outputs[row["class_map_path"]]["sha256"] == row["class_map_sha256"] == sha256_file(class_map)
    assert manifest["kind"] == "semantic-segmentation"
    (instrument,) = manifest["instruments"]
    assert instrument["model_id"] == MODEL and instrument["license"] == "other"
    assert instrument["preprocess_tag"] == pair.preprocess_tag and instrument["segmenter"] == {"max_label_side": 1024}
    assert sum(1 for path in outputs if path.startswith("preview-")) == len(semantic_home.catalog.plates)


def test_partition_metadata_and_checks(semantic_home, first_run):
    records = semantic_home.instance.fetch_materializations(dg.AssetKey(SEMANTIC_ASSET), limit=100).records
    by_plate = {
        r.asset_materialization.partition.split("|")[-1]: r.asset_materialization.metadata
        for r in records
        if r.run_id == first_run.dagster_run_id
    }
    assert set(by_plate) == set(semantic_home.catalog.plates)  # exactly one materialization per partition
    for plate_id, metadata in by_plate.items():
        top = metadata["top_classes"].value.records
        assert metadata["class_count"].value >= 1 and top
        assert {r.data["label"] for r in top} <= {*_ADE20K_FIRST_LABELS, TRANSPARENT_LABEL}
        assert metadata["preview_image"].value.startswith("![classes over")
        png = Image.open(metadata["preview"].value)
        assert png.format == "PNG" and max(png.size) <= 256
        assert sha256_file(Path(metadata["class_map"].value)) == metadata["class_map_sha256"].value
        assert metadata["license"].value == "other" and metadata["status"].value == "computed"
        assert (metadata["transparent_fraction"].value > 0) == ("rgba" in plate_id)
    checks = semantic_home.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(SEMANTIC_ASSET), name)
         for name in (CLASS_MAP_DECODES_TO_PLATE_SIZE, CLASS_AREAS_SUM_TO_PLATE)]  # fmt: skip
    )
    assert len(checks) == 2
    for latest in checks.values():
        assert latest.run_id == first_run.dagster_run_id and latest.status.value == "SUCCEEDED"


def test_checks_name_a_wrong_plate_size(semantic_home, first_run):
    pair = next(iter(semantic_home.store.sealed_pairs(semantic_home.pin_key).values()))
    plate = semantic_home.catalog.plates[pair.plate_id]
    good = check_class_map_pairs([pair], {plate.sha256: (plate.height, plate.width)})
    assert all(outcome.passed for outcome in good.values())
    bad = check_class_map_pairs([pair], {plate.sha256: (plate.height + 1, plate.width)})
    assert not bad[CLASS_MAP_DECODES_TO_PLATE_SIZE].passed and not bad[CLASS_AREAS_SUM_TO_PLATE].passed
    assert "decodes to" in bad[CLASS_MAP_DECODES_TO_PLATE_SIZE].failures[0].detail
    tampered = replace(pair, record_ids=pair.record_ids[1:])
    assert "record ids differ" in check_class_map_pairs([tampered], {plate.sha256: (plate.height, plate.width)})[
        CLASS_AREAS_SUM_TO_PLATE
    ].failures[0].detail


def test_rerun_reuses_sealed_pairs(semantic_home, first_run):
    runs_before = semantic_home.store.run_dirs()
    (again,) = materialize(semantic_home)
    assert again.success
    assert semantic_home.store.run_dirs() == runs_before  # nothing recomputed, no new sealed run
    metadata = semantic_home.instance.get_latest_materialization_event(
        dg.AssetKey(SEMANTIC_ASSET)
    ).asset_materialization.metadata
    assert metadata["status"].value == f"reused from sealed run {metadata['run_id'].value}"
    assert metadata["run_id"].value in {p.name for p in runs_before}


def test_lineage_of_a_class_area_record_reaches_its_plate(semantic_home, first_run):
    from awb_dagster.provenance.lineage import lineage

    pair = next(iter(semantic_home.store.sealed_pairs(semantic_home.pin_key).values()))
    info = lineage(semantic_home.store, pair.record_ids[0])
    assert info["scope"] == "plate" and info["plate"]["sha256"] == pair.plate_sha256
    assert info["model"]["pin_key"] == semantic_home.pin_key and info["model"]["license"] == "other"
    assert info["artifact"]["verified"]


def test_automation_requests_only_pins_the_license_gate_admits(semantic_home, loopback_hub):
    from datetime import UTC, datetime, timedelta

    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, semantic_home.resource)
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)

    def requested_after_the_nightly_tick(license_opt_in: list[str]) -> set[str]:
        defs = build_definitions(home=str(semantic_home.paths.root), endpoint=loopback_hub.endpoint, offline=False,
                                 license_opt_in=license_opt_in)  # fmt: skip
        cursor = None
        for hour in (1, 3):  # the default cron ticks at 02:00
            result = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(SEMANTIC_ASSET),
                evaluation_time=day0 + timedelta(hours=hour), cursor=cursor,
            )  # fmt: skip
            cursor = result.cursor
        return set(result.get_requested_partitions(dg.AssetKey(SEMANTIC_ASSET)))

    assert requested_after_the_nightly_tick([]) == set()
    requested = requested_after_the_nightly_tick([OPT_IN])
    assert {str(key).split("|")[0] for key in requested} == {semantic_home.pin_key}
    assert len(requested) == len(semantic_home.catalog.plates)
