"""The Places365 probe (seed 7.5) through birder's own recipe: a tiny rope_vit_reg4_b14 in birder's
hub layout (``<weights>.pt``, torch.load weights_only), its labels and inference transform, the sha256
birder's registry declares, and ``places365_logits`` through Dagster on the sample plates."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.tiny_birder import DEMO_PLACES_LABELS
from awb_dagster.instruments.birder_classifier import BirderClassifier, split_weights_name
from awb_dagster.instruments.classifier import label_set_sha256
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MODEL = "awb-demo/tiny-places-birder"
ASSET = "places365_logits"


def test_weights_names_resolve_through_birders_registry():
    network, tag, sha = split_weights_name("rope_vit_reg4_b14_capi-places365")
    assert (network, tag) == ("rope_vit_reg4_b14", "capi-places365")
    assert sha == "4d3ef700eb0d454c9406e9b5c11f70106b46ed4a6ca24c1d89a60097ad78ea9a"
    assert split_weights_name("rope_vit_reg4_b14_awb-demo-places") == ("rope_vit_reg4_b14", "awb-demo-places", None)
    with pytest.raises(InstrumentError, match="no registered birder network"):
        split_weights_name("not-a-birder-model_x")


@pytest.fixture(scope="module")
def places_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "places365", [MODEL])


def _loaded(home: DemoHome, **changes) -> BirderClassifier:
    from dataclasses import replace

    pin = PinLock.load(home.paths.lock).find_key(home.pin_key)
    instrument = replace(Registry.load(lock_path=home.paths.lock).get(MODEL).instrument, **changes)
    return BirderClassifier(instrument, pin, device="cpu", cache_dir=home.paths.hf_cache)


def test_the_pinned_pt_loads_with_its_classes_and_birders_transform(places_home):
    probe = _loaded(places_home)
    assert probe.labels == list(DEMO_PLACES_LABELS) and probe.model_class == "rope_vit_reg4_b14"
    assert (probe.network, probe.tag, probe.size) == ("rope_vit_reg4_b14", "awb-demo-places", (28, 28))
    for part in ("proc=birder.inference_preset", "bicubic:antialias:28x28", "mean(0.485,0.456,0.406)", "adapter=birder-classifier-v1"):
        assert part in probe.preprocess_tag
    from PIL import Image

    prepared = probe.prepare(Image.new("RGB", (60, 20), (250, 240, 220)))
    assert tuple(prepared.shape) == (3, 28, 28)
    logits = probe.logits([prepared, prepared])
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    described = probe.describe()
    assert described["weight_file"] == "rope_vit_reg4_b14_awb-demo-places.pt" and len(described["weight_file_sha256"]) == 64
    assert described["calibration"]["status"] == "uncalibrated" and described["birder_registry_sha256"] is None


def test_a_wrong_class_count_or_weights_name_is_named(places_home):
    with pytest.raises(InstrumentError, match="5 classes .* expected_dim = 365"):
        _loaded(places_home, expected_dim=365)
    with pytest.raises(InstrumentError, match=r"cannot fetch rope_vit_reg4_b14_other\.pt"):
        _loaded(places_home, weight_id="rope_vit_reg4_b14_other")


def test_places365_logits_through_dagster_with_the_probe_contract(places_home):
    runs = materialize_pin_ranges(places_home.defs, places_home.instance, job_name(ASSET), ASSET, {}, places_home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    pairs = places_home.store.sealed_pairs(places_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(places_home.catalog.plates)  # awkward plates included
    for row in pq.read_table(next(iter(pairs.values())).artifact_path).to_pylist():
        assert row["labels"] == list(DEMO_PLACES_LABELS) and row["label_set_sha256"] == label_set_sha256(list(DEMO_PLACES_LABELS))
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert "adapter=birder-classifier-v1" in row["preprocess_tag"]
    evaluations = [
        e.dagster_event.event_specific_data
        for e in places_home.instance.all_logs(runs[0].dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert len(evaluations) == 3 and all(e.passed for e in evaluations)
