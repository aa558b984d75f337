"""The CLIP-fed aesthetic MLP (seed 7.1): it reads the sealed clip_embeddings records of the CLIP it
was trained on (never recomputes them), its lineage runs score -> embedding -> plate, and a missing
CLIP pin or embedding is an error naming the pin."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from awb_dagster.assets.factory import job_name
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.probes import check_score_pairs
from awb_dagster.provenance.report import format_lineage
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MLP = "awb-demo/tiny-aesthetic-mlp"
CLIP = "awb-demo/tiny-clip"
ASSET = "aesthetic_scores"


def run(home: DemoHome, asset: str, pin_key: str, plate_ids=None):
    return materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, {}, pin_key, plate_ids)


def step_failure(home: DemoHome, dagster_run_id: str) -> str:
    """The failed step's message: a dg.Failure's description, else the error raised."""
    (failure,) = home.instance.all_logs(dagster_run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    data = failure.dagster_event.step_failure_data
    if data.user_failure_data:
        return data.user_failure_data.description
    error, messages = data.error, []
    while error is not None:  # the error the producer raised is the cause of Dagster's step error
        messages.append(error.message)
        error = error.cause
    return " ".join(messages)


@pytest.fixture(scope="module")
def aesthetic_home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "aesthetic", [MLP, CLIP])


def test_a_plate_without_the_clip_embedding_fails_naming_the_pin(aesthetic_home):
    plate_id = sorted(aesthetic_home.catalog.plates)[0]
    (result,) = run(aesthetic_home, ASSET, aesthetic_home.pins[MLP], [plate_id])
    assert not result.success
    message = step_failure(aesthetic_home, result.dagster_run_id)
    assert f"no sealed clip_embeddings record of pin {aesthetic_home.pins[CLIP]}" in message


@pytest.fixture(scope="module")
def scored(aesthetic_home):
    assert all(r.success for r in run(aesthetic_home, "clip_embeddings", aesthetic_home.pins[CLIP]))
    runs = run(aesthetic_home, ASSET, aesthetic_home.pins[MLP])
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_scores_point_at_the_embedding_records_they_read(aesthetic_home, scored):
    store = aesthetic_home.store
    pairs = list(store.sealed_pairs(aesthetic_home.pins[MLP]).values())
    assert {p.plate_id for p in pairs} == set(aesthetic_home.catalog.plates)  # awkward plates included
    clip_records = {r for p in store.sealed_pairs(aesthetic_home.pins[CLIP]).values() for r in p.record_ids}
    rows = pq.read_table(pairs[0].artifact_path).to_pylist()
    for row in rows:
        assert row["embedding_ref"] in clip_records and row["embedding_pin"] == aesthetic_home.pins[CLIP]
        assert np.isfinite(row["score"]) and f"clip_pin={aesthetic_home.pins[CLIP]}" in row["preprocess_tag"]
    outcomes = check_score_pairs(store, pairs)
    assert all(o.passed and o.checked == len(pairs) for o in outcomes.values())


def test_lineage_runs_score_embedding_plate(aesthetic_home, scored):
    pair = next(iter(aesthetic_home.store.sealed_pairs(aesthetic_home.pins[MLP]).values()))
    info = lineage(aesthetic_home.store, pair.record_ids[0])
    assert info["model"]["model_id"] == MLP and info["embedding"]["model"]["model_id"] == CLIP
    assert info["embedding"]["plate"]["sha256"] == info["plate"]["sha256"] == pair.plate_sha256
    text = format_lineage(info)
    assert "embedding   the embedding record this score was computed from:" in text and "32-d" in text


def test_without_a_clip_pin_the_step_fails_naming_the_model_to_pin(loopback_hub, tmp_path_factory):
    home = make_demo_home(loopback_hub, tmp_path_factory, "aesthetic-no-clip", [MLP])
    (result,) = run(home, ASSET, home.pins[MLP], [sorted(home.catalog.plates)[0]])
    assert not result.success
    message = step_failure(home, result.dagster_run_id)
    assert f"scores the embeddings of {CLIP}, which has no active pin" in message and f"awb pin {CLIP}" in message


def test_probe_axes_correlate_scores_with_the_map_and_show_the_extremes(aesthetic_home, scored):
    from awb_dagster.runner import materialize_atlas

    atlas = materialize_atlas(aesthetic_home.defs, aesthetic_home.instance, {"atlas": {"k": 2}}, assets=["atlas"])
    assert atlas.success
    result = materialize_atlas(aesthetic_home.defs, aesthetic_home.instance, assets=["probe_axes"])
    assert result.success
    metadata = aesthetic_home.instance.get_latest_materialization_event(dg.AssetKey("probe_axes")).asset_materialization.metadata
    rows = [row.data for row in metadata["correlations"].value.records]
    clip = aesthetic_home.pins[CLIP]
    found = {(row["probe_pin"], row["axis"], row["reference"]) for row in rows}
    assert {(aesthetic_home.pins[MLP], "score", f"PC1 {clip}"), (aesthetic_home.pins[MLP], "score", f"PC2 {clip}")} <= found
    assert all(row["plates"] == len(aesthetic_home.catalog.plates) for row in rows)
    assert all(row["spearman_rho"] is None or -1 <= row["spearman_rho"] <= 1 for row in rows)
    assert "lowest:" in metadata["extremes"].value and "data:image/png;base64," in metadata["extremes"].value
    assert f"map of {clip} colored by {aesthetic_home.pins[MLP]} score" in metadata["maps_by_probe_axis"].value


def test_a_mirror_loads_only_with_the_originals_md5(aesthetic_home):
    """camenduru/improved-aesthetic-predictor's adapter spec demands the MD5 of christophschuhmann's
    original file: the tiny MLP file (same layout, other bytes) under that spec is refused by name."""
    from dataclasses import replace

    from awb_dagster.instruments.aesthetic_mlp import ORIGINAL_SAC_LOGOS_AVA1_MD5, AestheticMlp
    from awb_dagster.instruments.common import InstrumentError
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry

    pin = PinLock.load(aesthetic_home.paths.lock).find_key(aesthetic_home.pins[MLP])
    instrument = Registry.load(lock_path=aesthetic_home.paths.lock).get(MLP).instrument
    loaded = AestheticMlp(instrument, pin, cache_dir=aesthetic_home.paths.hf_cache)
    assert loaded.describe()["original_md5"] is None and len(loaded.weight_md5) == 32
    mirror = replace(instrument, key="improved-aesthetic-predictor")
    with pytest.raises(InstrumentError, match=f"has MD5 {ORIGINAL_SAC_LOGOS_AVA1_MD5}.*not an exact mirror"):
        AestheticMlp(mirror, pin, cache_dir=aesthetic_home.paths.hf_cache)
