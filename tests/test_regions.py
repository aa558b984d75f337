"""Region embeddings: the crop policy and tiling as pure functions, then ``segment_embeddings`` and
``tile_embeddings`` end to end with tiny real-architecture CLIP, DINOv2 and SAM checkpoints from the
loopback hub over the sample plates (awkward ones and a plate smaller than a tile included)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from awb_dagster.cli import format_lineage
from awb_dagster.plates.imaging import load_plate
from awb_dagster.instruments.regions import CropPolicy, RegionError, Tiling, masks_tag, parse_tile_ref, tile_ref
from awb_dagster.provenance.checks import SEGMENT_REFS_RESOLVE, TILES_COVER_PLATE
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.records import record_id, segment_pin_key, tile_pair_key
from awb_dagster.runner import materialize_masks, materialize_regions
from demo_homes import DemoHome, make_demo_home

PERMISSIVE_SAM = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                  "box_nms_thresh": 0.99, "max_working_side": 256}  # fmt: skip
SMALL_TILES = {"tile_size": 256, "stride": 192, "edge": "shift"}


# --- pure: tiling and crops ------------------------------------------------------------------


def _covered(boxes, width, height) -> np.ndarray:
    covered = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        covered[y : y + h, x : x + w] = True
    return covered


@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize(("width", "height"), [(640, 209), (412, 640), (500, 500), (256, 256), (257, 1000), (40, 7)])
def test_tiles_cover_the_plate_per_edge_policy(edge, width, height):
    tiling = Tiling(tile_size=256, stride=192, edge=edge)
    boxes = tiling.boxes(width, height)
    assert _covered(boxes, width, height).all()
    assert len(set(boxes)) == len(boxes)
    for x, y, w, h in boxes:
        if edge == "shift":  # every tile inside the plate, full size unless the plate is smaller
            assert x + w <= width and y + h <= height
            assert (w, h) == (min(256, width), min(256, height))
        else:  # every tile full size, starting inside the plate
            assert (w, h) == (256, 256) and x < width and y < height


def test_tile_starts_follow_the_stride():
    boxes = Tiling(tile_size=100, stride=75, edge="shift").boxes(300, 100)
    assert [b[0] for b in boxes] == [0, 75, 150, 200]  # the last is shifted to end at the edge
    boxes = Tiling(tile_size=100, stride=75, edge="pad").boxes(300, 100)
    assert [b[0] for b in boxes] == [0, 75, 150, 225]


def test_a_plate_smaller_than_a_tile_is_one_tile():
    assert Tiling(tile_size=512, stride=384, edge="shift").boxes(40, 7) == [(0, 0, 40, 7)]
    assert Tiling(tile_size=512, stride=384, edge="pad").boxes(40, 7) == [(0, 0, 512, 512)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"stride": 0}, "stride"), ({"stride": 600}, "stride"), ({"tile_size": 8}, "tile_size"),
     ({"edge": "drop"}, "edge"), ({"fill": (0, 0, 300)}, "fill")],
)  # fmt: skip
def test_tiling_rejects_bad_settings_naming_the_field(kwargs, field):
    with pytest.raises(RegionError, match=field):
        Tiling(**kwargs)


def test_tile_crop_pads_with_fill_and_fills_transparent_pixels():
    pixels = np.zeros((10, 12, 3), dtype=np.uint8)
    opaque = np.ones((10, 12), dtype=bool)
    opaque[0, 0] = False
    tiling = Tiling(tile_size=16, stride=16, edge="pad", fill=(1, 2, 3))
    tile = np.asarray(tiling.crop(pixels, (0, 0, 16, 16), opaque))
    assert tile.shape == (16, 16, 3)
    assert (tile[:10, :12][1:, :] == 0).all() and tuple(tile[0, 0]) == (1, 2, 3)
    assert (tile[10:] == (1, 2, 3)).all() and (tile[:, 12:] == (1, 2, 3)).all()


def test_tile_refs_round_trip():
    assert parse_tile_ref(tile_ref((3, 4, 256, 128))) == (3, 4, 256, 128)
    with pytest.raises(RegionError):
        parse_tile_ref("3,4,5,6")


def test_crop_policy_pads_the_bbox_and_applies_the_mask():
    pixels = np.full((50, 60, 3), 7, dtype=np.uint8)
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 20:40] = True
    mask[10, 20] = False
    policy = CropPolicy(padding=0.1, apply_mask=True, fill=(255, 0, 0))
    assert policy.box((20, 10, 20, 10), 60, 50) == (18, 8, 42, 22)  # 10% of the longer side (20) = 2
    crop = np.asarray(policy.crop(pixels, mask, (20, 10, 20, 10)))
    assert crop.shape == (14, 24, 3)
    assert (crop[2:12, 2:22][1:] == 7).all()  # inside the mask: the plate's pixels
    assert tuple(crop[0, 0]) == (255, 0, 0) and tuple(crop[2, 2]) == (255, 0, 0)  # outside: fill
    unmasked = np.asarray(CropPolicy(padding=0.0, apply_mask=False).crop(pixels, mask, (20, 10, 20, 10)))
    assert unmasked.shape == (10, 20, 3) and (unmasked == 7).all()
    assert policy.box((0, 0, 60, 50), 60, 50) == (0, 0, 60, 50)  # clipped to the plate


def test_crop_policy_tags_differ_for_different_pipelines():
    tags = {
        CropPolicy().tag(),
        CropPolicy(apply_mask=False).tag(),
        CropPolicy(padding=0.2).tag(),
        CropPolicy(fill=(0, 0, 0)).tag(),
        CropPolicy(min_region_area=1).tag(),
    }
    assert len(tags) == 5
    with pytest.raises(RegionError, match="padding"):
        CropPolicy(padding=-1)


# --- the assets end to end -------------------------------------------------------------------


@dataclass
class RegionHome(DemoHome):
    @property
    def sam(self) -> str:
        return self.pins["awb-demo/tiny-sam"]


@pytest.fixture(scope="module")
def region_home(loopback_hub, tmp_path_factory) -> RegionHome:
    tiny = Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 45, 3), dtype=np.uint8))
    home = make_demo_home(
        loopback_hub, tmp_path_factory, "region", ["awb-demo/tiny-clip", "awb-demo/tiny-dinov2", "awb-demo/tiny-sam"],
        extra_plates={"tiny_45x30.png": tiny}, batch_size=8,  # a plate smaller than a tile
    )  # fmt: skip
    home = RegionHome(**vars(home))
    clip, dino, sam = (home.pins[r] for r in ("awb-demo/tiny-clip", "awb-demo/tiny-dinov2", "awb-demo/tiny-sam"))
    # The plate sensor registers every (embedding pin, SAM pin) pair and every embedding pin for tiles.
    assert {segment_pin_key(clip, sam), segment_pin_key(dino, sam)} <= set(home.added["segment_pins"])
    assert {clip, dino} <= set(home.added["tile_pins"])
    assert materialize_masks(home.defs, home.instance, sam, config=PERMISSIVE_SAM)[0].success
    return home


@pytest.fixture(scope="module")
def segment_runs(region_home):
    runs = {}
    for repo in ("awb-demo/tiny-clip", "awb-demo/tiny-dinov2"):
        key = segment_pin_key(region_home.pins[repo], region_home.sam)
        runs[repo] = materialize_regions(region_home.defs, region_home.instance, "segment", key, config={"min_region_area": 16})
        assert [r.success for r in runs[repo]] == [True]
    return runs


@pytest.fixture(scope="module")
def tile_run(region_home):
    runs = materialize_regions(region_home.defs, region_home.instance, "tile", region_home.pins["awb-demo/tiny-clip"], config=SMALL_TILES)
    assert [r.success for r in runs] == [True]
    return runs[0]


def _mask_rows(home: RegionHome) -> dict[str, dict]:
    rows = {}
    for pair in home.store.sealed_pairs(home.sam).values():
        for row in pq.read_table(pair.artifact_path).to_pylist():
            rows[row["record_id"]] = row
    return rows


def test_segment_embeddings_reference_existing_masks(region_home, segment_runs):
    masks = _mask_rows(region_home)
    for repo in ("awb-demo/tiny-clip", "awb-demo/tiny-dinov2"):
        pin = region_home.pins[repo]
        pairs = region_home.store.sealed_pairs(segment_pin_key(pin, region_home.sam))
        assert {p.plate_id for p in pairs.values()} == set(region_home.catalog.plates)
        embedded = 0
        for pair in pairs.values():
            plate = region_home.catalog.plates[pair.plate_id]
            table = pq.read_table(pair.artifact_path).to_pylist()
            assert [r["record_id"] for r in table] == list(pair.record_ids)
            plate_masks = [m for m in masks.values() if m["plate_sha256"] == plate.sha256]
            assert len(table) == sum(m["area"] >= 16 for m in plate_masks)  # min_region_area drops the rest
            for row in table:
                mask = masks[row["region_ref"]]  # the region is a sealed mask of the same plate bytes
                assert mask["plate_sha256"] == row["plate_sha256"] == plate.sha256
                assert row["scope"] == "segment" and row["pin_key"] == pin
                assert "region=segment:bbox-pad=0.1:mask=applied" in row["preprocess_tag"]
                assert f"masks={region_home.sam}:" in row["preprocess_tag"] and "draft=none" in row["preprocess_tag"]
                assert row["record_id"] == record_id(
                    plate_sha256=plate.sha256, model_sha=row["model_sha"], preprocess_tag=row["preprocess_tag"],
                    scope="segment", region=row["region_ref"],
                )  # fmt: skip
                assert len(row["vector"]) == row["vector_dim"] and np.isfinite(row["vector"]).all()
                embedded += 1
        assert embedded > 0


def test_segment_checks_pass_and_partitions_carry_metadata(region_home, segment_runs):
    run = segment_runs["awb-demo/tiny-clip"][0]
    records = region_home.instance.fetch_materializations(dg.AssetKey("segment_embeddings"), limit=100).records
    mine = [r.asset_materialization for r in records if r.run_id == run.dagster_run_id]
    assert sorted(m.partition.split("|")[-1] for m in mine) == sorted(region_home.catalog.plates)
    for materialization in mine:
        metadata = materialization.metadata
        assert metadata["records"].value == metadata["masks"].value - metadata["skipped_below_min_area"].value
        assert metadata["pin"].value == region_home.pins["awb-demo/tiny-clip"]
        assert metadata["status"].value == "computed"
    key = dg.AssetCheckKey(dg.AssetKey("segment_embeddings"), SEGMENT_REFS_RESOLVE)
    latest = region_home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert latest.status.value == "SUCCEEDED"


def test_lineage_of_a_segment_embedding_reaches_mask_sam_pin_and_plate(region_home, segment_runs):
    clip = region_home.pins["awb-demo/tiny-clip"]
    pair = next(p for p in region_home.store.sealed_pairs(segment_pin_key(clip, region_home.sam)).values() if p.record_ids)
    info = lineage(region_home.store, pair.record_ids[0])
    plate = region_home.catalog.plates[pair.plate_id]
    assert info["scope"] == "segment" and info["model"]["pin_key"] == clip
    region = info["region"]
    assert region["record_id"] == info["region_ref"] and region["mask"]["area"] > 0
    assert region["model"]["pin_key"] == region_home.sam and region["model"]["model_id"] == "awb-demo/tiny-sam"
    assert region["plate"]["sha256"] == info["plate"]["sha256"] == plate.sha256
    assert info["artifact"]["verified"] and region["artifact"]["verified"]
    text = format_lineage(info)
    assert "the mask this segment was cut from" in text and region_home.sam in text


def test_segment_rerun_reuses_sealed_pairs(region_home, segment_runs):
    key = segment_pin_key(region_home.pins["awb-demo/tiny-clip"], region_home.sam)
    before = len(list(region_home.store.manifests()))
    runs = materialize_regions(region_home.defs, region_home.instance, "segment", key, config={"min_region_area": 16})
    assert runs[0].success and len(list(region_home.store.manifests())) == before
    latest = region_home.instance.get_latest_materialization_event(dg.AssetKey("segment_embeddings"))
    assert latest.asset_materialization.metadata["status"].value.startswith("reused from sealed run")


def test_segments_without_masks_fail_naming_the_partition(region_home, tmp_path):
    from awb_dagster.provenance.masksets import mask_set

    plate = next(iter(region_home.catalog.plates.values()))
    with pytest.raises(RegionError, match=f"materialize sam_masks for partition .*{plate.plate_id}"):
        mask_set(region_home.store, region_home.sam, plate, "no-such-tag")


def test_tile_embeddings_cover_each_plate(region_home, tile_run):
    clip = region_home.pins["awb-demo/tiny-clip"]
    pairs = region_home.store.sealed_pairs(tile_pair_key(clip))
    assert {p.plate_id for p in pairs.values()} == set(region_home.catalog.plates)
    tiling = Tiling(**SMALL_TILES)
    for pair in pairs.values():
        plate = region_home.catalog.plates[pair.plate_id]
        rows = pq.read_table(pair.artifact_path).to_pylist()
        boxes = [parse_tile_ref(r["region_ref"]) for r in rows]
        assert boxes == tiling.boxes(plate.width, plate.height)
        assert _covered(boxes, plate.width, plate.height).all()
        assert all(r["scope"] == "tile" and tiling.tag() in r["preprocess_tag"] for r in rows)
        if max(plate.width, plate.height) < 256:  # the plate smaller than a tile: one tile of it
            assert boxes == [(0, 0, plate.width, plate.height)]
    key = dg.AssetCheckKey(dg.AssetKey("tile_embeddings"), TILES_COVER_PLATE)
    latest = region_home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert latest.status.value == "SUCCEEDED"
    info = lineage(region_home.store, next(iter(pairs.values())).record_ids[0])
    assert info["scope"] == "tile" and info["region"] is None and info["region_ref"].startswith("xywh=")
    assert "tile        xywh=" in format_lineage(info)


def test_bad_tiling_config_fails_naming_the_field(region_home):
    runs = materialize_regions(
        region_home.defs, region_home.instance, "tile", region_home.pins["awb-demo/tiny-dinov2"],
        config={"tile_size": 64, "stride": 100},
    )  # fmt: skip
    assert not runs[0].success
    failure = next(
        e for e in region_home.instance.all_logs(runs[0].dagster_run_id) if e.dagster_event and e.dagster_event.is_step_failure
    )
    assert "stride must be between 1 and tile_size" in str(failure.dagster_event.event_specific_data.error)


def test_atlas_reads_segment_and_tile_scopes(region_home, segment_runs, tile_run):
    import dagster as dg

    from awb_dagster.runner import materialize_atlas

    result = materialize_atlas(
        region_home.defs, region_home.instance, {"atlas": {"k": 2, "scopes": ["segment", "tile"]}}, assets=("atlas",)
    )
    assert result.success
    metadata = region_home.instance.get_latest_materialization_event(dg.AssetKey("atlas")).asset_materialization.metadata
    graphs = {(row.data["pin"], row.data["scope"]): row.data for row in metadata["graphs"].value.records}
    clip, dino = region_home.pins["awb-demo/tiny-clip"], region_home.pins["awb-demo/tiny-dinov2"]
    assert {(clip, "segment"), (dino, "segment"), (clip, "tile")} <= set(graphs)
    segments = sum(
        len(p.record_ids) for p in region_home.store.sealed_pairs(f"{clip}~{region_home.sam}").values()
    )
    assert graphs[(clip, "segment")]["nodes"] == segments


def test_a_plate_without_masks_gives_an_empty_valid_segment_partition(region_home, segment_runs):
    plate_id = sorted(region_home.catalog.plates)[0]
    defaults = {"points_per_side": 4, "max_working_side": 256}  # segment-anything's filters keep no random-weight mask
    assert materialize_masks(region_home.defs, region_home.instance, region_home.sam, [plate_id], config=defaults)[0].success
    empty = next(
        p for p in region_home.store.sealed_pairs(region_home.sam).values()
        if p.plate_id == plate_id and "pred_iou_thresh=0.88," in p.preprocess_tag
    )  # fmt: skip
    assert empty.record_ids == ()
    key = segment_pin_key(region_home.pins["awb-demo/tiny-clip"], region_home.sam)
    runs = materialize_regions(
        region_home.defs, region_home.instance, "segment", key, [plate_id],
        config={"min_region_area": 16, "sam_preprocess_tag": empty.preprocess_tag},
    )  # fmt: skip
    assert runs[0].success
    chosen = masks_tag(region_home.sam, empty.preprocess_tag)
    pair = next(p for p in region_home.store.sealed_pairs(key).values() if p.preprocess_tag.endswith(chosen))
    assert pair.plate_id == plate_id
    assert pair.record_ids == () and pq.read_table(pair.artifact_path).num_rows == 0
    metadata = region_home.instance.get_latest_materialization_event(dg.AssetKey("segment_embeddings")).asset_materialization.metadata
    assert metadata["records"].value == 0 and metadata["masks"].value == 0


SHARED_PLATES = Path(__file__).resolve().parents[2] / "shared" / "plates"


@pytest.mark.skipif(not SHARED_PLATES.is_dir(), reason="../shared/plates is not present")
def test_awkward_full_size_plates_give_segments_and_covering_tiles(loopback_hub, tmp_path_factory):
    """The grayscale, alpha and 3:1 strip scans at full size: masks, segment embeddings of them, and
    default tiles (512/384, shift) that cover each plate; transparent pixels take the fill."""
    awkward = sorted(SHARED_PLATES.glob("AWKWARD_*"))
    home = make_demo_home(
        loopback_hub, tmp_path_factory, "awkward", ["awb-demo/tiny-clip", "awb-demo/tiny-sam"], plate_files=awkward
    )
    clip, sam = home.pins["awb-demo/tiny-clip"], home.pins["awb-demo/tiny-sam"]
    assert materialize_masks(home.defs, home.instance, sam, config=PERMISSIVE_SAM)[0].success
    key = segment_pin_key(clip, sam)
    assert materialize_regions(home.defs, home.instance, "segment", key, config={"min_region_area": 16})[0].success
    assert materialize_regions(home.defs, home.instance, "tile", clip)[0].success
    segments = home.store.sealed_pairs(key)
    assert {p.plate_id for p in segments.values()} == set(home.catalog.plates)
    assert sum(len(p.record_ids) for p in segments.values()) > 0
    tiling = Tiling()
    for pair in home.store.sealed_pairs(tile_pair_key(clip)).values():
        plate = home.catalog.plates[pair.plate_id]
        boxes = [parse_tile_ref(r) for r in pq.read_table(pair.artifact_path, columns=["region_ref"])["region_ref"].to_pylist()]
        assert boxes == tiling.boxes(plate.width, plate.height) and _covered(boxes, plate.width, plate.height).all()
    for name in (SEGMENT_REFS_RESOLVE, TILES_COVER_PLATE):
        asset = "segment_embeddings" if name == SEGMENT_REFS_RESOLVE else "tile_embeddings"
        key_ = dg.AssetCheckKey(dg.AssetKey(asset), name)
        assert home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key_])[key_].status.value == "SUCCEEDED"
    # The alpha plate: a tile over its transparent pixels shows the fill colour there.
    rgba = next(p for p in home.catalog.plates.values() if "rgba" in p.plate_id)
    image, opaque = load_plate(rgba.path, rgba.sha256, max_pixels=home.resource.max_pixels)
    assert opaque is not None and not opaque.all()
    fill = (1, 2, 3)
    box = Tiling(fill=fill).boxes(image.width, image.height)[0]
    tile = np.asarray(Tiling(fill=fill).crop(np.asarray(image), box, opaque))
    x, y, w, h = box
    assert (tile[~opaque[y : y + h, x : x + w]] == fill).all()


def test_region_automation_follows_masks_and_retired_pins(loopback_hub, tmp_path_factory):
    """On the cron tick: a segment partition is requested when its plate's masks are
    re-materialized, and no region partition of a retired pin is requested."""
    from datetime import UTC, datetime, timedelta

    from awb_dagster.cli import main

    cron = "0 2 * * *"
    home = make_demo_home(
        loopback_hub, tmp_path_factory, "region-automation", ["awb-demo/tiny-clip", "awb-demo/tiny-sam"],
        automation_cron=cron,
    )  # fmt: skip
    clip, sam = home.pins["awb-demo/tiny-clip"], home.pins["awb-demo/tiny-sam"]
    plates = sorted(home.catalog.plates)
    segments, tiles, masks = (dg.AssetKey(n) for n in ("segment_embeddings", "tile_embeddings", "sam_masks"))
    pair = segment_pin_key(clip, sam)
    assert home.defs.resolve_job_def("observe_plate_files").execute_in_process(instance=home.instance).success

    def report(asset: dg.AssetKey, pin: str, plate_ids) -> None:
        for plate_id in plate_ids:
            home.instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=f"{pin}|{plate_id}"))

    report(masks, sam, plates)
    report(segments, pair, plates)
    report(tiles, clip, plates)
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    cursor = None

    def tick(day: int, hour: int) -> tuple[set[str], set[str]]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs=home.defs, instance=home.instance, asset_selection=dg.AssetSelection.assets(segments, tiles),
            evaluation_time=day0 + timedelta(days=day, hours=hour), cursor=cursor,
        )  # fmt: skip
        cursor = result.cursor
        return set(result.get_requested_partitions(segments)), set(result.get_requested_partitions(tiles))

    assert tick(0, 1) == (set(), set())
    assert tick(0, 3) == (set(), set())  # the tick passed, nothing changed
    report(masks, sam, plates[:1])  # new masks for one plate
    assert tick(1, 1) == (set(), set())  # before the tick: nothing yet
    assert tick(1, 3) == ({f"{pair}|{plates[0]}"}, set())
    report(segments, pair, plates[:1])
    report(masks, sam, plates[1:2])
    assert tick(2, 3) == ({f"{pair}|{plates[1]}"}, set())
    report(segments, pair, plates[1:2])
    main(["pin", "--retire", clip, "--home", str(home.paths.root)])
    report(masks, sam, plates[2:3])
    assert tick(3, 3) == (set(), set())  # the embedding pin of the pair is retired
