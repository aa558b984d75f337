"""Segment Anything masks: the generator's pure helpers, and ``sam_masks`` end to end with the tiny
real-architecture SAM checkpoint from the loopback hub over the sample plates (awkward ones included)."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from awb_dagster.instruments.amg import GeneratorSettings
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.plates.imaging import working_size
from awb_dagster.provenance.rows import count_components, mask_sha256
from awb_dagster.partitions import pins_partitions
from awb_dagster.provenance.checks import MASKS_DECODE_TO_PLATE_SIZE, check_mask_pairs
from awb_dagster.provenance.records import mask_schema, mask_table, record_id
from awb_dagster.provenance.store import MANIFEST_NAME
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.runner import materialize_masks
from demo_homes import DemoHome, make_demo_home

# Random weights give near-identical masks of low predicted IoU: permissive filters keep some,
# segment-anything's defaults keep none (the valid empty result).
PERMISSIVE = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "box_nms_thresh": 0.99, "max_working_side": 256}  # fmt: skip
DEFAULTS_SMALL_GRID = {"points_per_side": 4, "max_working_side": 256}


# --- pure helpers ----------------------------------------------------------------------------


def _components_by_flood_fill(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (["...", "...", "..."], 0),
        (["###", "###", "###"], 1),
        (["#.#", "...", "#.#"], 4),
        (["#..", ".#.", "..#"], 1),  # diagonal: 8-connected
        (["##.##", "#...#", "#####"], 1),  # a U joins at the bottom
        (["#.#.#", "#####"], 1),
        (["#...#", ".....", "#...#"], 4),
    ],
)
def test_count_components_known_shapes(rows, expected):
    mask = np.array([[c == "#" for c in row] for row in rows])
    assert count_components(mask) == expected


@pytest.mark.parametrize("seed", range(5))
def test_count_components_matches_flood_fill(seed):
    mask = np.random.default_rng(seed).random((23, 31)) < 0.35
    assert count_components(mask) == _components_by_flood_fill(mask)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((640, 209), 256, (256, 84)), ((412, 640), 1024, (412, 640)), ((500, 500), 100, (100, 100))],
)
def test_working_size_bounds_the_longest_side(size, max_side, expected):
    assert working_size(*size, max_side) == expected


def test_generator_settings_tag_and_validation():
    tag = GeneratorSettings(points_per_side=4).tag()
    assert "points_per_side=4" in tag and "pred_iou_thresh=0.88" in tag and "max_working_side=1024" in tag
    # The batch size bounds memory but does not change the masks, so it does not change the tag.
    assert GeneratorSettings(points_per_batch=3).tag() == GeneratorSettings().tag()
    with pytest.raises(InstrumentError, match="points_per_side"):
        GeneratorSettings(points_per_side=0)


def test_empty_mask_table_is_valid():
    table = mask_table([])
    assert table.num_rows == 0 and table.schema == mask_schema()


def test_mask_check_names_a_wrong_size(tmp_path):
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    row = dict.fromkeys(mask_schema().names)
    row.update(record_id="id0", rle_counts=rle["counts"].decode("ascii"), rle_size=list(rle["size"]), mask_sha256=mask_sha256(mask))
    path = tmp_path / "masks-00000.parquet"
    pq.write_table(mask_table([row]), path)

    @dataclass(frozen=True)
    class Pair:
        run_id: str = "r"
        artifact: str = "masks-00000.parquet"
        artifact_path: Path = path
        plate_id: str = "p"
        plate_sha256: str = "s"
        record_ids: tuple = ("id0",)

    good = check_mask_pairs([Pair()], {"s": (10, 12)})[MASKS_DECODE_TO_PLATE_SIZE]
    assert good.passed and good.checked == 1
    bad = check_mask_pairs([Pair()], {"s": (12, 10)})[MASKS_DECODE_TO_PLATE_SIZE]
    assert not bad.passed and bad.failures[0].record_id == "id0" and "(10, 12)" in bad.failures[0].detail


# --- the asset end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_home(loopback_hub, tmp_path_factory) -> DemoHome:
    home = make_demo_home(loopback_hub, tmp_path_factory, "sam", ["awb-demo/tiny-sam"])
    assert home.added[pins_partitions["sam"].name] == [home.pin_key]  # the plate sensor registers SAM pins too
    return home


@pytest.fixture(scope="module")
def permissive_run(sam_home):
    runs = materialize_masks(sam_home.defs, sam_home.instance, sam_home.pin_key, config=PERMISSIVE)
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def _pairs(home: DemoHome, tag_fragment: str):
    return [p for p in home.store.sealed_pairs(home.pin_key).values() if tag_fragment in p.preprocess_tag]


def test_masks_decode_to_plate_size_with_matching_geometry(sam_home, permissive_run):
    pairs = _pairs(sam_home, "pred_iou_thresh=0,")
    assert {p.plate_id for p in pairs} == set(sam_home.catalog.plates)
    total = 0
    for pair in pairs:
        plate = sam_home.catalog.plates[pair.plate_id]
        rows = pq.read_table(pair.artifact_path).to_pylist()
        assert [r["record_id"] for r in rows] == list(pair.record_ids)
        for row in rows:
            mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
            assert mask.shape == (plate.height, plate.width)
            assert mask_sha256(mask) == row["mask_sha256"]
            ys, xs = np.nonzero(mask)
            assert row["area"] == mask.sum() > 0
            assert row["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert row["centroid"] == pytest.approx([xs.mean(), ys.mean()])
            assert row["area_fraction"] == pytest.approx(row["area"] / (plate.width * plate.height))
            w, h = row["bbox"][2:]
            assert row["bbox_area_fraction"] == pytest.approx(w * h / (plate.width * plate.height))
            assert row["bbox_fill"] == pytest.approx(row["area"] / (w * h))
            assert row["fragmentation"] == count_components(mask.astype(bool))
            assert row["record_id"] == record_id(
                plate_sha256=plate.sha256, model_sha=row["model_sha"], preprocess_tag=row["preprocess_tag"],
                scope="segment", region=f"mask-sha256:{row['mask_sha256']}",
            )  # fmt: skip
            cx, cy, cw, ch = row["crop_box"]
            assert (cx, cy, cw, ch) == (0, 0, plate.width, plate.height)  # no crop layers
            assert 0 <= row["point_coords"][0] <= plate.width and 0 <= row["point_coords"][1] <= plate.height
            total += 1
    assert total >= len(pairs)  # permissive filters keep at least one mask per plate here


def test_alpha_plate_masks_exclude_transparent_pixels(sam_home, permissive_run):
    pair = next(p for p in _pairs(sam_home, "pred_iou_thresh=0,") if "rgba" in p.plate_id)
    plate = sam_home.catalog.plates[pair.plate_id]
    transparent = np.asarray(Image.open(plate.path).convert("RGBA"))[..., 3] == 0
    assert transparent.any()
    for row in pq.read_table(pair.artifact_path).to_pylist():
        mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
        assert not (mask.astype(bool) & transparent).any()


def test_manifest_records_every_generator_parameter(sam_home, permissive_run):
    pair = _pairs(sam_home, "pred_iou_thresh=0,")[0]
    manifest = json.loads((pair.artifact_path.parent / MANIFEST_NAME).read_text())
    instrument = manifest["instruments"][0]
    assert set(instrument["generator"]) == {f.name for f in fields(GeneratorSettings)}
    expected = asdict(GeneratorSettings(**PERMISSIVE))
    assert instrument["generator"] == expected and manifest["config"]["generator"] == expected
    assert instrument["preprocess"]["alpha_policy"] and instrument["preprocess_tag"] == pair.preprocess_tag
    assert "amg=points_per_side=4," in pair.preprocess_tag and "max-side=256" in pair.preprocess_tag
    previews = [o for o in manifest["outputs"] if o["path"].endswith(".png")]
    assert len(previews) == len(sam_home.catalog.plates)


def test_partition_metadata_and_check(sam_home, permissive_run):
    records = sam_home.instance.fetch_materializations(dg.AssetKey("sam_masks"), limit=100).records
    by_plate = {}
    for record in records:
        if record.run_id == permissive_run.dagster_run_id:
            materialization = record.asset_materialization
            by_plate[materialization.partition.split("|")[-1]] = materialization.metadata
    assert set(by_plate) == set(sam_home.catalog.plates)  # exactly one materialization per partition
    for metadata in by_plate.values():
        assert metadata["mask_count"].value == metadata["records"].value >= 1
        assert 0 < metadata["coverage"].value <= 1
        assert metadata["preview_image"].value.startswith("![masks over")
        png = Image.open(metadata["preview"].value)
        assert png.format == "PNG" and max(png.size) <= 256
    checks = sam_home.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("sam_masks"), MASKS_DECODE_TO_PLATE_SIZE)]
    )
    latest = next(iter(checks.values()))
    assert latest.run_id == permissive_run.dagster_run_id and latest.status.value == "SUCCEEDED"


def test_no_mask_passing_the_filters_is_a_valid_empty_result(sam_home):
    plate_id = sorted(sam_home.catalog.plates)[0]
    runs = materialize_masks(sam_home.defs, sam_home.instance, sam_home.pin_key, [plate_id], config=DEFAULTS_SMALL_GRID)
    assert runs[0].success
    pair = next(p for p in _pairs(sam_home, "pred_iou_thresh=0.88,") if p.plate_id == plate_id)
    assert pair.record_ids == () and pq.read_table(pair.artifact_path).num_rows == 0
    metadata = sam_home.instance.get_latest_materialization_event(dg.AssetKey("sam_masks")).asset_materialization.metadata
    assert metadata["mask_count"].value == 0 and metadata["coverage"].value == 0.0
    # A second run reuses the sealed pair instead of recomputing it.
    again = materialize_masks(sam_home.defs, sam_home.instance, sam_home.pin_key, [plate_id], config=DEFAULTS_SMALL_GRID)
    assert again[0].success
    metadata = sam_home.instance.get_latest_materialization_event(dg.AssetKey("sam_masks")).asset_materialization.metadata
    assert metadata["status"].value.startswith("reused from sealed run")


@pytest.fixture(scope="module")
def generator(sam_home):
    from awb_dagster.instruments.sam import MaskGenerator

    pin = PinLock.load(sam_home.paths.lock).find_key(sam_home.pin_key)
    instrument = Registry.load(lock_path=sam_home.paths.lock).get(pin.model_id).instrument
    return MaskGenerator(
        instrument, pin, GeneratorSettings(**PERMISSIVE), device="cpu", cache_dir=sam_home.paths.hf_cache
    )


@pytest.mark.parametrize("size", [(3, 2), (1, 1), (40, 7)])
def test_tiny_plates_give_masks_at_their_size(generator, size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for generated in generator.generate(image):
        assert generated.mask.shape == (size[1], size[0]) and generated.mask.any()


def test_fully_transparent_plate_gives_no_masks(generator):
    image = Image.new("RGB", (48, 32), (255, 255, 255))
    assert generator.generate(image, np.zeros((32, 48), dtype=bool)) == []


def test_lineage_of_a_mask_reaches_its_plate(sam_home, permissive_run):
    from awb_dagster.provenance.lineage import lineage

    pair = next(p for p in _pairs(sam_home, "pred_iou_thresh=0,") if p.record_ids)
    info = lineage(sam_home.store, pair.record_ids[0])
    assert info["scope"] == "segment" and info["mask"]["area"] > 0
    assert info["plate"]["sha256"] == sam_home.catalog.plates[pair.plate_id].sha256
    assert info["model"]["pin_key"] == sam_home.pin_key and info["artifact"]["verified"]


def test_small_region_cleanup_removes_islands(generator):
    import cv2

    from awb_dagster.instruments.sam import MaskGenerator

    area = 12
    settings = GeneratorSettings(**{**PERMISSIVE, "min_mask_region_area": area, "max_working_side": 48})
    cleaned = MaskGenerator(generator.instrument, generator.pin, settings, device="cpu")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    masks = cleaned.generate(image)
    assert masks
    for generated in masks:
        count, _, stats, _ = cv2.connectedComponentsWithStats(generated.mask.astype(np.uint8), connectivity=8)
        islands = stats[1:, cv2.CC_STAT_AREA]
        # segment-anything keeps the largest island when every island is small
        assert len(islands) == 1 or (islands >= area).all()


def test_crop_layers_give_masks_in_plate_coordinates(generator):
    from awb_dagster.instruments.sam import MaskGenerator

    settings = GeneratorSettings(**{**PERMISSIVE, "crop_n_layers": 1, "points_per_side": 2, "max_working_side": 32})
    cropped = MaskGenerator(generator.instrument, generator.pin, settings, device="cpu")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    masks = cropped.generate(image)
    assert masks
    for generated in masks:
        x, y, w, h = generated.crop_box
        assert generated.mask.shape == (48, 80)
        assert 0 <= x and 0 <= y and x + w <= 80 and y + h <= 48
