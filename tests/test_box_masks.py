"""Text -> boxes -> masks -> embeddings (issue 12, seed 6 → 5): the sealed GroundingDINO boxes of
the tiny demo checkpoint prompt the tiny SAM (``box_masks``), and the masks feed segment embeddings
of the tiny CLIP; one Dagster path over the sample plates (awkward ones included), the mask contract
plus the box of every mask, the lineage chain segment -> mask -> box -> prompt -> detector pin ->
plate, and a plate without sealed boxes failing its partition naming the detector asset to run."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pyarrow.parquet as pq
import pytest
import torch
from pycocotools import mask as mask_utils

from awb_dagster.assets.factory import job_name
from awb_dagster.instruments.box_sam import BOX_PROMPT_VERSION, MASK_THRESHOLD, STABILITY_OFFSET, stability_score
from awb_dagster.producers.box_masks import DETECTOR_ASSETS
from awb_dagster.provenance.box_masks import box_mask_table, check_box_refs
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.records import box_mask_pin_key, segment_pin_key
from awb_dagster.provenance.report import format_lineage
from awb_dagster.provenance.rows import mask_sha256
from awb_dagster.registry.prompts import PromptRegistry
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

GROUNDING = "awb-demo/tiny-grounding-dino"
SAM = "awb-demo/tiny-sam"
CLIP = "awb-demo/tiny-clip"
# Random weights: a lower box threshold than GroundingDINO's default keeps boxes on most plates.
DETECTION_CONFIG = {"box_threshold": 0.3}


@pytest.fixture(scope="module")
def home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "boxmask", [GROUNDING, SAM, CLIP])


def _run(home: DemoHome, asset: str, key: str, plates, config=None):
    return materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, config or {}, key, plates)


@pytest.fixture(scope="module")
def plates(home) -> list[str]:
    """The first four sample plates registered (the three awkward ones among them); the last one
    never gets boxes."""
    registered = list(home.instance.get_dynamic_partitions("plates"))
    assert sum(plate.startswith("awkward") for plate in registered[:4]) == 3
    return registered[:4]


@pytest.fixture(scope="module")
def chain(home, plates) -> dict[str, str]:
    """Boxes, box masks, then segment embeddings of those masks, each one Dagster run."""
    detector, sam, clip = home.pins[GROUNDING], home.pins[SAM], home.pins[CLIP]
    box_key = box_mask_pin_key(detector, sam)
    segment_key = segment_pin_key(clip, box_key)
    runs = {}
    for asset, key, config in (
        ("grounding_dino_detections", detector, DETECTION_CONFIG),
        ("box_masks", box_key, {}),
        ("segment_embeddings", segment_key, {"min_region_area": 1}),
    ):
        (runs[asset],) = _run(home, asset, key, plates, config)
        assert runs[asset].success, f"{asset} {key}"
    return {"detector": detector, "box_key": box_key, "segment_key": segment_key,
            "runs": {asset: run.dagster_run_id for asset, run in runs.items()}}  # fmt: skip


def _checks(home: DemoHome, run_id: str) -> dict[str, bool]:
    return {
        e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed
        for e in home.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    }


def test_stability_score_is_segment_anythings():
    from segment_anything.utils.amg import calculate_stability_score

    logits = torch.randn(1, 40, 60, generator=torch.Generator().manual_seed(0)) * 3
    expected = float(calculate_stability_score(logits, MASK_THRESHOLD, STABILITY_OFFSET)[0])
    assert stability_score(logits[0].numpy()) == pytest.approx(expected, abs=1e-6)


def test_box_masks_read_the_assets_of_the_detection_producers():
    from awb_dagster.producers import FAMILY_PRODUCERS

    assert {family: FAMILY_PRODUCERS[family].asset_name for family in DETECTOR_ASSETS} == DETECTOR_ASSETS


def test_the_sync_registers_box_mask_and_segment_keys(home):
    box_key = box_mask_pin_key(home.pins[GROUNDING], home.pins[SAM])
    assert home.added["box_mask_pins"] == [box_key]
    assert segment_pin_key(home.pins[CLIP], box_key) in home.added["segment_pins"]


def test_box_masks_follow_the_mask_contract_and_name_their_box(home, plates, chain):
    store = home.store
    prompt = PromptRegistry.load().get("grounding.bird")
    pairs = store.sealed_pairs(chain["box_key"])
    assert sorted(p.plate_id for p in pairs.values()) == sorted(plates)
    boxes = {
        row["record_id"]: row
        for pair in store.sealed_pairs(chain["detector"]).values()
        for row in pq.read_table(pair.artifact_path).to_pylist()
    }
    masks = 0
    for pair in pairs.values():
        assert BOX_PROMPT_VERSION in pair.preprocess_tag and f"boxes={chain['detector']}:" in pair.preprocess_tag
        for row in pq.read_table(pair.artifact_path).to_pylist():
            masks += 1
            box = boxes[row["box_ref"]]
            assert box["plate_sha256"] == row["plate_sha256"] == pair.plate_sha256
            assert (row["label"], row["box_xywh"], row["box_pin"]) == (box["label"], box["bbox"], chain["detector"])
            assert (row["prompt_id"], row["prompt_sha256"]) == ("grounding.bird", prompt.sha256)
            decoded = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
            assert mask_sha256(decoded) == row["mask_sha256"] and decoded.sum() == row["area"] > 0
            assert 0.0 <= row["stability_score"] <= 1.0 and row["point_coords"] is None
    assert masks > 0
    assert _checks(home, chain["runs"]["box_masks"]) == {"masks_decode_to_plate_size": True, "box_refs_resolve": True}
    assert _checks(home, chain["runs"]["segment_embeddings"])["segment_refs_resolve"]
    box_run = home.instance.get_latest_materialization_event(dg.AssetKey("box_masks"))
    metadata = box_run.asset_materialization.metadata
    assert metadata["detector_pin"].value == chain["detector"] and "counts_per_label" in metadata


def test_a_box_mask_naming_another_box_pin_fails_its_check(home, chain, tmp_path):
    pair = next(p for p in home.store.sealed_pairs(chain["box_key"]).values() if p.record_ids)
    assert check_box_refs(home.store, [pair])["box_refs_resolve"].passed
    rows = pq.read_table(pair.artifact_path).to_pylist()
    rows[0]["box_pin"] = "another-detector@0000000000"
    path = tmp_path / "masks.parquet"
    pq.write_table(box_mask_table(rows), path)
    failures = check_box_refs(home.store, [dataclasses.replace(pair, artifact_path=path)])["box_refs_resolve"].failures
    assert [f.record_id for f in failures] == [rows[0]["record_id"]] and "another-detector" in failures[0].detail


def test_segment_lineage_runs_to_the_box_prompt_and_detector_pin(home, chain):
    pair = next(p for p in home.store.sealed_pairs(chain["segment_key"]).values() if p.record_ids)
    info = lineage(home.store, pair.record_ids[0])
    mask = info["region"]
    box = mask["box"]
    assert info["scope"] == "segment" and info["model"]["pin_key"] == home.pins[CLIP]
    assert mask["model"]["pin_key"] == home.pins[SAM] and mask["mask"]["area"] > 0
    assert box["model"]["pin_key"] == chain["detector"] and box["plate"]["sha256"] == info["plate"]["sha256"]
    prompt = box["detection"]["prompt"]
    assert (prompt["prompt_id"], prompt["version"], prompt["text"]) == ("grounding.bird", 1, "bird . egg . nest . branch . fish .")
    text = format_lineage(info)
    order = ["the mask this segment was cut from", "the detected box this mask was prompted with", "prompt      grounding.bird",
             f"model       {GROUNDING} @"]  # fmt: skip
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions), text


def test_a_plate_without_sealed_boxes_fails_naming_the_detector_asset(home, chain, capsys):
    """Through `awb run --family box-masks`: the run fails, its event log and awb's `why:` line
    name the detector asset to materialize."""
    from awb_dagster.cli import main

    last = list(home.instance.get_dynamic_partitions("plates"))[-1]
    argv = ["run", "--family", "box-masks", "--pin", chain["box_key"], "--plates", last, "--home", str(home.paths.root)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"FAILED {chain['box_key']}: 1 plates, dagster run " in out
    run_id = out.split("dagster run ")[-1].split()[0]
    failure = next(
        e for e in home.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    ).dagster_event.step_failure_data.user_failure_data.description
    for text in (failure, out):
        assert f"no sealed grounding_dino_detections box records for plate {last}" in text
        assert f"materialize grounding_dino_detections for partition {chain['detector']}|{last}" in text
