"""The image-fed aesthetics predictor V1 (seed 7.1, shunk031/aesthetics-predictor-v1-*) without remote
code: a tiny checkpoint in the layout its package's push_to_hub writes, loaded into transformers' own
CLIPVisionModelWithProjection plus a Linear head, scored as the package's forward scores, and
``aesthetic_image_scores`` through Dagster on the sample plates."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from awb_dagster.assets.factory import job_name
from awb_dagster.instruments.aesthetic_v1 import AestheticPredictorV1, vision_config
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MODEL = "awb-demo/tiny-aesthetic-v1"
ASSET = "aesthetic_image_scores"


@pytest.fixture(scope="module")
def v1_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "aesthetic-v1", [MODEL])


@pytest.fixture(scope="module")
def predictor(v1_home) -> AestheticPredictorV1:
    pin = PinLock.load(v1_home.paths.lock).find_key(v1_home.pin_key)
    instrument = Registry.load(lock_path=v1_home.paths.lock).get(MODEL).instrument
    return AestheticPredictorV1(instrument, pin, device="cpu", cache_dir=v1_home.paths.hf_cache)


def test_scores_match_the_packages_forward_through_from_pretrained(predictor):
    """The package's class (CLIPVisionModelWithProjection + predictor, as in its v1.py) loaded with
    transformers' from_pretrained from the same snapshot gives the adapter's scores."""
    from pathlib import Path

    from PIL import Image
    from transformers import CLIPVisionModelWithProjection

    class PackageV1(CLIPVisionModelWithProjection):  # aesthetics_predictor.v1.AestheticsPredictorV1's structure
        def __init__(self, config):
            super().__init__(config)
            self.predictor = torch.nn.Linear(config.projection_dim, 1)
            self.post_init()

    snapshot = Path(predictor.snapshot_dir)
    reference = PackageV1.from_pretrained(snapshot).eval()
    prepared = [predictor.prepare(Image.new("RGB", (50, 30), color)) for color in ((250, 240, 220), (20, 60, 30))]
    with torch.no_grad():
        embeds = reference(pixel_values=torch.stack(prepared)).image_embeds
        expected = reference.predictor(embeds / embeds.norm(dim=-1, keepdim=True)).squeeze(-1).numpy()
    assert np.allclose(predictor.scores(prepared), expected, atol=1e-5)
    assert predictor.weight_name == "model.safetensors" and predictor.config.projection_dim == 16
    for part in ("proc=CLIPImageProcessor", "crop=center:height=32,width=32", "adapter=aesthetic-v1-v1"):
        assert part in predictor.preprocess_tag
    assert "LAION aesthetics V1" in predictor.describe()["calibration"]


def test_a_config_without_clip_vision_fields_is_refused():
    with pytest.raises(InstrumentError, match="not a CLIP vision config"):
        vision_config({"model_type": "aesthetics_predictor", "num_labels": 1})


def test_aesthetic_image_scores_through_dagster(v1_home):
    runs = materialize_pin_ranges(v1_home.defs, v1_home.instance, job_name(ASSET), ASSET, {}, v1_home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    pairs = v1_home.store.sealed_pairs(v1_home.pin_key)
    assert {p.plate_id for p in pairs.values()} == set(v1_home.catalog.plates)  # awkward plates included
    for row in pq.read_table(next(iter(pairs.values())).artifact_path).to_pylist():
        assert np.isfinite(row["score"]) and row["calibration"].startswith("LAION aesthetics V1")
        assert "adapter=aesthetic-v1-v1" in row["preprocess_tag"]
    (evaluation,) = [
        e.dagster_event.event_specific_data
        for e in v1_home.instance.all_logs(runs[0].dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert evaluation.check_name == "image_scores_finite" and evaluation.passed
    metadata = v1_home.instance.get_latest_materialization_event(dg.AssetKey(ASSET)).asset_materialization.metadata
    assert "random weights" in metadata["intended_use"].value and np.isfinite(metadata["score"].value)


def test_the_finite_check_names_a_nan_score_and_a_missing_record(tmp_path):
    from dataclasses import replace

    from awb_dagster.provenance.image_scores import check_image_score_pairs, image_score_table
    from awb_dagster.provenance.records import RECORD_FIELDS
    from awb_dagster.provenance.store import SealedPair

    rows = [{name: f"{name}-{r}" for name, _ in RECORD_FIELDS} | {"record_id": r} for r in ("r1", "r2")]
    path = tmp_path / "scores.parquet"
    pq.write_table(image_score_table(rows, np.array([0.5, np.nan], dtype=np.float32), "uncalibrated"), path)
    pair = SealedPair("run", None, "p1", "0" * 64, "pin", "t", ("r1",), "scores.parquet", "", path)
    outcome = check_image_score_pairs([pair, replace(pair, plate_id="p2", record_ids=("r2",)),
                                       replace(pair, plate_id="p3", record_ids=("r3",))])["image_scores_finite"]  # fmt: skip
    assert outcome.checked == 3 and [f.plate_id for f in outcome.failures] == ["p2", "p3"]
    assert "not finite" in outcome.failures[0].detail and "missing" in outcome.failures[1].detail
