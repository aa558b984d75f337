"""Object detection (seed 6): the DETR adapter on a tiny DetrForObjectDetection in the published
transformers layout (own ResNet backbone, as facebook/detr-resnet-50's no_timm revision), the box
contract and its checks, and ``detr_detections`` through Dagster on the sample plates (awkward ones
included) with per-plate counts and relations in the partition metadata."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.checkpoints import DEMO_DETECTION_LABELS
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.detection import ObjectDetector, clip_xyxy, require_backbone_available
from awb_dagster.instruments.grounding import GroundedDetector, prompt_phrases
from awb_dagster.provenance.boxes import box_rows, box_summary, box_table, check_box_pairs, check_box_prompts, relation
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.prompts import PromptRegistry
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MODEL = "awb-demo/tiny-detr"
ASSET = "detr_detections"
THRESHOLD = 0.05  # random weights score low: keep some boxes on every plate


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((10, 10, 5, 5), (0, 0, 100, 100), ["inside"]),
        ((0, 0, 10, 10), (0, 20, 10, 10), ["above"]),
        ((0, 20, 10, 10), (0, 0, 10, 10), ["below"]),
        ((0, 0, 10, 10), (20, 20, 10, 10), ["above", "left"]),
        ((30, 0, 10, 10), (0, 0, 10, 10), ["right"]),
        ((0, 0, 10, 10), (5, 5, 10, 10), ["overlaps"]),
    ],
)
def test_relation_between_two_boxes(a, b, expected):
    assert relation(a, b) == expected


def test_clip_xyxy_keeps_boxes_inside_the_plate():
    assert clip_xyxy([-5.0, 2.0, 50.0, 300.0], 40, 200) == ((0.0, 2.0, 40.0, 198.0), True)
    assert clip_xyxy([1.0, 2.0, 3.0, 4.0], 40, 200) == ((1.0, 2.0, 2.0, 2.0), False)


def test_summary_counts_labels_and_relates_boxes():
    boxes = [
        SimpleNamespace(xywh=(0.0, 0.0, 100.0, 100.0), score=0.9, label="nest", label_id=3, clipped=False),
        SimpleNamespace(xywh=(10.0, 10.0, 20.0, 20.0), score=0.8, label="egg", label_id=2, clipped=False),
        SimpleNamespace(xywh=(60.0, 10.0, 20.0, 20.0), score=0.7, label="egg", label_id=2, clipped=False),
    ]
    fields = dict(plate_id="p", plate_sha256="a" * 64, model_id="m", model_sha="b" * 40, pin_key="k",
                  preprocess_tag="t", run_id="r")  # fmt: skip
    rows = box_rows(boxes, width=200, height=100, score_threshold=0.5, **fields)
    assert [row["bbox_norm"] for row in rows][1] == [0.05, 0.1, 0.1, 0.2]
    summary = box_summary(rows)
    assert summary["counts"] == {"egg": 2, "nest": 1}
    assert {"subject": "nest#0", "relation": "overlaps", "object": "egg#1"} in summary["relations"]
    assert {"subject": "egg#1", "relation": "left", "object": "egg#2"} in summary["relations"]


def test_a_timm_backbone_without_timm_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    config = SimpleNamespace(backbone_config=SimpleNamespace(model_type="timm_backbone", backbone="resnet50"))
    pin = SimpleNamespace(sha="c" * 40)
    with pytest.raises(InstrumentError, match=r"timm backbone \(resnet50\).*--revision no_timm"):
        require_backbone_available("facebook/detr-resnet-50", pin, config)


@pytest.fixture(scope="module")
def detr_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "detr", [MODEL])


def test_adapter_labels_tag_and_boxes(detr_home):
    pin = PinLock.load(detr_home.paths.lock).find_key(detr_home.pin_key)
    instrument = Registry.load(lock_path=detr_home.paths.lock).get(MODEL).instrument
    detector = ObjectDetector(instrument, pin, score_threshold=0.0, device="cpu", cache_dir=detr_home.paths.hf_cache)
    assert detector.model_class == "DetrForObjectDetection"
    assert sorted(detector.labels.values()) == sorted(DEMO_DETECTION_LABELS)
    for part in ("proc=DetrImageProcessor", "longest_edge=96,shortest_edge=64", "pad=True", "score>=0", "clip=plate"):
        assert part in detector.preprocess_tag
    plate = next(iter(detr_home.catalog.plates.values()))
    image = detector.load_plate(plate.path, plate.sha256, max_pixels=detr_home.resource.max_pixels)
    boxes = detector.detect(image)
    assert len(boxes) == 10  # every query at threshold 0
    assert all(0.0 <= b.score <= 1.0 and b.label in DEMO_DETECTION_LABELS for b in boxes)
    assert all(b.xywh[0] + b.xywh[2] <= plate.width and b.xywh[1] + b.xywh[3] <= plate.height for b in boxes)


@pytest.fixture(scope="module")
def detr_run(detr_home):
    config = {"score_threshold": THRESHOLD}
    home = detr_home
    runs = materialize_pin_ranges(home.defs, home.instance, job_name(ASSET), ASSET, config, home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_box_records_follow_the_contract(detr_home, detr_run):
    pairs = detr_home.store.sealed_pairs(detr_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(detr_home.catalog.plates)  # awkward plates included
    sizes = {plate.sha256: (plate.height, plate.width) for plate in detr_home.catalog.plates.values()}
    total = 0
    for pair in pairs.values():
        rows = pq.read_table(pair.artifact_path).to_pylist()
        total += len(rows)
        assert [row["record_id"] for row in rows] == list(pair.record_ids)
        for row in rows:
            assert row["plate_size"] == list(sizes[pair.plate_sha256])
            assert row["score"] >= THRESHOLD and row["score_threshold"] == pytest.approx(THRESHOLD)
            assert f"score>={THRESHOLD:g}" in row["preprocess_tag"]
            assert row["label"] in DEMO_DETECTION_LABELS and row["prompt_id"] is None
    assert total > 0


def test_checks_pass_and_partitions_show_counts_and_relations(detr_home, detr_run):
    evaluations = [
        e.dagster_event.event_specific_data
        for e in detr_home.instance.all_logs(
            detr_run.dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    ]
    assert {e.check_name for e in evaluations} == {"boxes_inside_plate", "box_scores_in_range"}
    assert all(e.passed for e in evaluations)
    metadata = detr_home.instance.get_latest_materialization_event(dg.AssetKey(ASSET)).asset_materialization.metadata
    counts = metadata["counts_per_label"].value
    assert sum(counts.values()) == metadata["box_count"].value and set(counts) <= set(DEMO_DETECTION_LABELS)
    assert metadata["score_threshold"].value == pytest.approx(THRESHOLD)
    assert {"subject", "relation", "object"} <= set(metadata["relations"].schema.columns[i].name for i in range(3))


def test_checks_name_boxes_outside_the_plate_and_bad_scores(detr_home, detr_run, tmp_path):
    pairs = [p for p in detr_home.store.sealed_pairs(detr_home.pin_key).values() if p.record_ids]
    shrunk = {plate.sha256: (2, 2) for plate in detr_home.catalog.plates.values()}
    failures = check_box_pairs(pairs, shrunk)["boxes_inside_plate"].failures
    assert failures and "outside the 2x2 plate" in failures[0].detail
    pair = pairs[0]
    rows = pq.read_table(pair.artifact_path).to_pylist()
    rows[0]["score"] = 1.5
    path = tmp_path / "boxes.parquet"
    pq.write_table(box_table(rows), path)
    tampered = dataclasses.replace(pair, artifact_path=path)
    sizes = {plate.sha256: (plate.height, plate.width) for plate in detr_home.catalog.plates.values()}
    outcomes = check_box_pairs([tampered], sizes)
    assert outcomes["boxes_inside_plate"].passed
    assert [f.record_id for f in outcomes["box_scores_in_range"].failures] == [rows[0]["record_id"]]


# --- GroundingDINO: text-conditioned boxes under the prompt registry ---------------------------

GROUNDING_MODEL = "awb-demo/tiny-grounding-dino"
GROUNDING_ASSET = "grounding_dino_detections"


def test_a_prompt_of_another_task_is_refused_before_loading(detr_home):
    pin = PinLock.load(detr_home.paths.lock).find_key(detr_home.pin_key)
    instrument = Registry.load(lock_path=detr_home.paths.lock).get(GROUNDING_MODEL).instrument
    caption = PromptRegistry.load().get("caption.plain")
    with pytest.raises(InstrumentError, match="caption prompt, not a detection prompt"):
        GroundedDetector(instrument, dataclasses.replace(pin, model_id=GROUNDING_MODEL), caption, device="cpu")


@pytest.fixture(scope="module")
def grounding_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "grounding", [GROUNDING_MODEL])


@pytest.fixture(scope="module")
def grounding_run(grounding_home):
    home = grounding_home
    asset = GROUNDING_ASSET
    runs = materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, {}, home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_grounded_boxes_carry_the_registry_prompt(grounding_home, grounding_run):
    prompt = PromptRegistry.load().get("grounding.bird")
    assert prompt_phrases(prompt) == ["bird", "egg", "nest", "branch", "fish"]
    pairs = grounding_home.store.sealed_pairs(grounding_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(grounding_home.catalog.plates)  # awkward plates included
    rows = [row for pair in pairs.values() for row in pq.read_table(pair.artifact_path).to_pylist()]
    assert rows, "the tiny random GroundingDINO scores above 0.35 on some plates"
    for row in rows:
        assert (row["prompt_id"], row["prompt_sha256"]) == ("grounding.bird", prompt.sha256)
        assert prompt.tag() in row["preprocess_tag"] and "box>=0.35;text>=0.25" in row["preprocess_tag"]
        assert row["label_id"] == -1 or prompt_phrases(prompt)[row["label_id"]] == row["label"]
        assert "[SEP]" not in row["label"] and "[CLS]" not in row["label"]


def test_grounded_checks_pass_and_a_changed_prompt_is_named(grounding_home, grounding_run):
    evaluations = [
        e.dagster_event.event_specific_data
        for e in grounding_home.instance.all_logs(
            grounding_run.dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    ]
    assert {e.check_name for e in evaluations} == {
        "boxes_inside_plate", "box_scores_in_range", "box_prompt_matches_registry",
    }  # fmt: skip
    assert all(e.passed for e in evaluations)
    event = grounding_home.instance.get_latest_materialization_event(dg.AssetKey(GROUNDING_ASSET))
    metadata = event.asset_materialization.metadata
    assert metadata["prompt"].value["prompt_id"] == "grounding.bird" and metadata["text_threshold"].value == 0.25
    pairs = [p for p in grounding_home.store.sealed_pairs(grounding_home.pin_key).values() if p.record_ids]
    outcome = check_box_prompts(pairs, {"grounding.bird": {"0" * 64}})
    assert len(outcome.failures) == sum(len(p.record_ids) for p in pairs)
    assert "matches none of the registry's versions" in outcome.failures[0].detail


# --- Box-prompted SAM: the same boxes through segment-anything's SamPredictor -------------------


def test_box_prompted_masks_match_segment_anything_sam_predictor(tmp_path):
    """Boxes prompt the pinned SAM (an original segment-anything checkpoint converted to SamModel,
    as sam_vit_* pins load) and give the masks SamPredictor gives for the same boxes on the same
    weights: IoU >= 0.99 per box on every sample plate, awkward ones included."""
    from segment_anything import SamPredictor

    from awb_dagster.demo.tiny_sam_original import build_tiny_original_sam, tiny_original_sam
    from awb_dagster.instruments.box_sam import box_prompted_masks
    from awb_dagster.instruments.sam_convert import load_original_as_transformers, processor_for
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
    from awb_dagster.plates.imaging import load_rgb

    path = tmp_path / "tiny_sam.pth"
    path.write_bytes(build_tiny_original_sam())
    model = load_original_as_transformers(path).eval()
    generator = SimpleNamespace(model=model, processor=processor_for(model.config), device=torch.device("cpu"),
                                dtype=torch.float32, instrument=SimpleNamespace(id="tiny-sam"))  # fmt: skip
    predictor = SamPredictor(tiny_original_sam())
    plates = sorted(p for p in SAMPLE_PLATES_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(plates) == 6
    for plate in plates:
        image = load_rgb(plate, max_pixels=10**9)
        w, h = image.size
        boxes = np.array([[0.1 * w, 0.1 * h, 0.6 * w, 0.5 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.95 * h], [0, 0, w, h]])
        predictor.set_image(np.asarray(image))
        for box, ours in zip(boxes, box_prompted_masks(generator, image, boxes), strict=True):
            reference, scores, _ = predictor.predict(box=box, multimask_output=False)
            union = np.logical_or(reference[0], ours.mask).sum()
            iou = np.logical_and(reference[0], ours.mask).sum() / union if union else 1.0
            assert iou >= 0.99, f"{plate.name} box {box.tolist()}: IoU {iou:.4f}"
            assert ours.predicted_iou == pytest.approx(float(scores[0]), abs=1e-4)
