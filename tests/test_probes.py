"""Classifier probes (seed 7.3, 7.4, 8.3): the adapter on a tiny ConvNeXt classifier in the
published transformers layout, the probe contract and its checks, ``wikiart_logits`` through
Dagster on the sample plates (awkward ones included), and the license gate for ``unknown``."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.checkpoints import DEMO_CLASSIFIER_LABELS
from awb_dagster.instruments.classifier import ImageClassifier, label_set_sha256, softmax
from awb_dagster.provenance.probes import check_probe_pairs
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.resources import AwbHome
from awb_dagster.resources.hub import HubResource
from awb_dagster.resources.instruments import InstrumentsResource, TorchResource
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MODEL = "awb-demo/tiny-wikiart-convnext"
ASSET = "wikiart_logits"


def test_softmax_rows_sum_to_one_even_for_large_logits():
    probabilities = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], dtype=np.float32))
    assert np.allclose(probabilities.sum(axis=1), 1.0) and np.isfinite(probabilities).all()
    assert probabilities[0, 0] == pytest.approx(1.0) and probabilities[1, 2] == pytest.approx(1 / 3)


def test_label_set_sha256_depends_on_names_and_order():
    assert label_set_sha256(["a", "b"]) != label_set_sha256(["b", "a"])
    assert label_set_sha256(["a", "b"]) == label_set_sha256(["a", "b"])


@pytest.fixture(scope="module")
def probe_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "probes", [MODEL])


@pytest.fixture(scope="module")
def classifier(probe_home) -> ImageClassifier:
    pin = PinLock.load(probe_home.paths.lock).find_key(probe_home.pin_key)
    instrument = Registry.load(lock_path=probe_home.paths.lock).get(MODEL).instrument
    return ImageClassifier(instrument, pin, device="cpu", cache_dir=probe_home.paths.hf_cache)


def test_labels_come_from_id2label_and_the_tag_names_the_processor(classifier):
    assert classifier.labels == list(DEMO_CLASSIFIER_LABELS)
    assert classifier.model_class == "ConvNextForImageClassification"
    tag = classifier.preprocess_tag
    for part in ("proc=ConvNextImageProcessor", "shortest_edge=32;crop_pct=0.875", "bicubic", "adapter=classifier-v1"):
        assert part in tag
    described = classifier.describe()
    assert described["calibration"]["status"] == "uncalibrated"
    assert described["intended_use"] and described["failure_modes"]


@pytest.fixture(scope="module")
def probe_run(probe_home):
    runs = materialize_pin_ranges(probe_home.defs, probe_home.instance, job_name(ASSET), ASSET, {}, probe_home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_records_carry_logits_probabilities_labels_and_calibration(probe_home, probe_run):
    pairs = probe_home.store.sealed_pairs(probe_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(probe_home.catalog.plates)  # awkward plates included
    rows = pq.read_table(next(iter(pairs.values())).artifact_path).to_pylist()
    for row in rows:
        assert row["labels"] == list(DEMO_CLASSIFIER_LABELS) and row["label_count"] == 5
        assert row["label_set_sha256"] == label_set_sha256(list(DEMO_CLASSIFIER_LABELS))
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert row["top_label"] == row["labels"][int(np.argmax(row["probabilities"]))]
        assert row["calibration"] == "uncalibrated"


def test_checks_pass_and_partitions_show_the_contract(probe_home, probe_run):
    evaluations = [
        e.dagster_event.event_specific_data
        for e in probe_home.instance.all_logs(probe_run.dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert {e.check_name for e in evaluations} == {
        "probe_values_finite", "probe_label_count_declared", "probe_probabilities_sum_to_one",
    }  # fmt: skip
    assert all(e.passed for e in evaluations)
    metadata = probe_home.instance.get_latest_materialization_event(dg.AssetKey(ASSET)).asset_materialization.metadata
    assert metadata["label_count"].value == 5 and metadata["calibration"].value["status"] == "uncalibrated"
    assert "random weights" in metadata["intended_use"].value
    assert len(metadata["top_labels"].value.records) == 5


def test_checks_name_a_wrong_label_count_and_label_set(probe_home, probe_run):
    pairs = list(probe_home.store.sealed_pairs(probe_home.pin_key).values())
    outcomes = check_probe_pairs(pairs, {probe_home.pin_key: (6, "0" * 64)})
    failures = outcomes["probe_label_count_declared"].failures
    assert len(failures) == len(pairs) and "declared 6 labels" in failures[0].detail
    outcomes = check_probe_pairs(pairs, {probe_home.pin_key: (5, "0" * 64)})
    assert "label set sha256" in outcomes["probe_label_count_declared"].failures[0].detail
    assert outcomes["probe_probabilities_sum_to_one"].passed and outcomes["probe_values_finite"].passed


def test_an_unknown_license_needs_the_opt_in(probe_home):
    """torchvision declares no license per weight (`unknown`): loading such a pin fails before any
    file is read, saying how to opt in."""
    lock = PinLock.load(probe_home.paths.lock)
    pin = Pin(
        model_id="torchvision/resnet50", sha="ab" * 32, revision_requested="resnet50-11ad3fa6.pth",
        pipeline_tag=None, library_name="torchvision", license="unknown", gated=False,
        config={"library_version": "0.29.1", "weight_id": "ResNet50_Weights.IMAGENET1K_V2", "weight_file": "resnet50-11ad3fa6.pth"},
        output_dim=None, input_size=None, pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint="file:/nowhere", instrument_key="resnet50",
    )  # fmt: skip
    lock.add(pin)
    lock.save(probe_home.paths.lock)
    resource = InstrumentsResource(
        home=AwbHome(home=str(probe_home.paths.root)), hub=HubResource(), torch=TorchResource(device="cpu")
    )
    with pytest.raises(dg.Failure, match=r"license 'unknown'.*AWB_LICENSE_OPT_IN"):
        resource.convnet(pin.key)


def test_probe_axes_pure_functions():
    from awb_dagster.atlas.probe_axes import correlate, extremes, neighbour_disagreement, probe_axes

    axes = probe_axes([{"plate_id": p, "labels": ["a", "b"], "probabilities": [v, 1 - v]} for p, v in
                       (("p1", 0.1), ("p2", 0.5), ("p3", 0.9), ("p4", 0.7))])  # fmt: skip
    assert set(axes) == {"p(a)", "p(b)"} and axes["p(a)"]["p3"] == pytest.approx(0.9)
    (up, down) = correlate("pin", {"p(a)": axes["p(a)"]}, {"up": {"p1": 1, "p2": 2, "p3": 4, "p4": 3},
                                                           "down": {"p1": 4, "p2": 3, "p3": 1, "p4": 2}})  # fmt: skip
    assert (up.reference, up.rho, down.rho) == ("up", pytest.approx(1.0), pytest.approx(-1.0))
    assert extremes(axes["p(a)"], 1) == (["p1"], ["p3"])
    assert neighbour_disagreement({"p1": ["p2", "p3"]}, {"p1": ["p2", "p4"], "p9": ["p1"]}) == {"p1": pytest.approx(1 - 1 / 3)}
