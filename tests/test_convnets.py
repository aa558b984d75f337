"""ConvNet texture baselines (seed 11): the local-file torchvision pin, the adapter, and
``convnet_embeddings`` run through Dagster on the sample plates (awkward ones included), with its
pooled features joining the atlas."""

from __future__ import annotations

import shutil

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.checkpoints import write_tiny_convnext
from awb_dagster.instruments.convnet import SPECS, ConvNetFeatures, gram_upper
from awb_dagster.partitions import pins_partitions
from awb_dagster.provenance.textures import gram_column
from awb_dagster.registry.hub_client import NotPinnableError
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.torchvision_weights import (
    WeightFileNameError,
    WeightHashPrefixError,
    capture_torchvision_pin,
    published_file_name,
)
from awb_dagster.runner import materialize_atlas, materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

MODEL = "awb-demo/tiny-convnext"
ASSET = "convnet_embeddings"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    return write_tiny_convnext(tmp_path_factory.mktemp("tv-weights"))


# --- the local-file pin -----------------------------------------------------------------------


def test_the_published_file_is_pinned_by_its_sha256_and_copied_into_the_home(registry, weight_file, tmp_path):
    pin = capture_torchvision_pin(registry.get(MODEL).instrument, weight_file, weights_dir=tmp_path)
    copied = tmp_path / pin.sha / weight_file.name
    assert copied.read_bytes() == weight_file.read_bytes()
    assert pin.sha.startswith(weight_file.name.split("-")[1].removesuffix(".pth"))
    assert pin.config == {"library_version": "0.29.1", "weight_id": "awb_demo.TINY_CONVNEXT", "weight_file": weight_file.name}


def test_a_renamed_file_is_refused(registry, weight_file, tmp_path):
    renamed = tmp_path / "my-weights.pth"
    shutil.copy(weight_file, renamed)
    with pytest.raises(WeightFileNameError, match="tiny_convnext-<sha256 prefix>.pth, not my-weights.pth"):
        capture_torchvision_pin(registry.get(MODEL).instrument, renamed, weights_dir=tmp_path / "w")


def test_a_wrong_file_under_the_right_name_is_refused(registry, weight_file, tmp_path):
    wrong = tmp_path / weight_file.name
    wrong.write_bytes(weight_file.read_bytes()[:-10])  # truncated
    with pytest.raises(WeightHashPrefixError, match="does not start with"):
        capture_torchvision_pin(registry.get(MODEL).instrument, wrong, weights_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_real_weights_must_carry_the_name_torchvision_publishes(registry, weight_file, tmp_path):
    resnet = registry.get("torchvision/resnet50").instrument
    assert published_file_name(resnet) == "resnet50-11ad3fa6.pth"
    with pytest.raises(WeightFileNameError, match="published as resnet50-11ad3fa6.pth"):
        capture_torchvision_pin(resnet, weight_file, weights_dir=tmp_path)
    with pytest.raises(NotPinnableError):
        capture_torchvision_pin(registry.get("openai/clip-vit-base-patch32").instrument, weight_file, weights_dir=tmp_path)


def test_every_section_11_baseline_is_runnable_with_a_declared_spec(registry):
    for entry in registry.family("convnet"):
        inst = entry.instrument
        assert inst.sealed_runs and inst.key in SPECS, inst.id
        if inst.section == "11":
            assert published_file_name(inst).endswith(".pth")


# --- the adapter ------------------------------------------------------------------------------


def test_gram_upper_is_the_upper_triangle_of_the_normalized_gram():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    flat = features.reshape(2, 3, 4)
    full = flat @ flat.transpose(1, 2) / 4
    upper = gram_upper(features)
    assert upper.shape == (2, 6)
    assert torch.allclose(upper[1], torch.tensor([full[1, i, j] for i in range(3) for j in range(i, 3)]))


@pytest.fixture(scope="module")
def features(registry, weight_file, tmp_path_factory) -> ConvNetFeatures:
    weights_dir = tmp_path_factory.mktemp("features-weights")
    instrument = registry.get(MODEL).instrument
    pin = capture_torchvision_pin(instrument, weight_file, weights_dir=weights_dir)
    return ConvNetFeatures(instrument, pin, weights_dir=weights_dir, device="cpu")


def test_the_preprocess_tag_names_the_transform_the_pool_and_the_gram_layers(features):
    tag = features.preprocess_tag
    for part in ("resize=36:bilinear:antialias", "crop=center:32", "pool=classifier.1", "gram=features.1,features.3",
                 "norm=mean(0.485,0.456,0.406)std(0.229,0.224,0.225)", "adapter=convnet-v1"):  # fmt: skip
        assert part in tag
    assert features.dim == 24 and features.gram_lengths == {"features.1": 8 * 9 // 2, "features.3": 16 * 17 // 2}


def test_a_changed_weight_file_is_refused_at_load(registry, weight_file, tmp_path):
    instrument = registry.get(MODEL).instrument
    pin = capture_torchvision_pin(instrument, weight_file, weights_dir=tmp_path)
    (tmp_path / pin.sha / weight_file.name).write_bytes(b"not the weights")
    with pytest.raises(Exception, match="the file changed on disk"):
        ConvNetFeatures(instrument, pin, weights_dir=tmp_path, device="cpu")


# --- through Dagster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convnet_home(loopback_hub, tmp_path_factory, weight_file) -> DemoHome:
    from awb_dagster.assets.plates import sync_partitions

    home = make_demo_home(loopback_hub, tmp_path_factory, "convnet", ["awb-demo/tiny-clip"])
    registry = Registry.load(lock_path=home.paths.lock)
    lock = PinLock.load(home.paths.lock)
    pin = capture_torchvision_pin(registry.get(MODEL).instrument, weight_file, weights_dir=home.paths.weights)
    lock.add(pin)
    lock.save(home.paths.lock)
    added = sync_partitions(home.instance, home.resource)
    assert added[pins_partitions["convnet"].name] == [pin.key]  # the plate sensor registers it
    home.pins[MODEL] = pin.key
    return home


@pytest.fixture(scope="module")
def convnet_run(convnet_home):
    runs = materialize_pin_ranges(
        convnet_home.defs, convnet_home.instance, job_name(ASSET), ASSET, {}, convnet_home.pins[MODEL], None
    )
    assert len(runs) == 1 and runs[0].success
    return runs[0]


def test_records_hold_pooled_features_and_gram_descriptors_for_every_plate(convnet_home, convnet_run):
    pairs = convnet_home.store.sealed_pairs(convnet_home.pins[MODEL])
    assert {p.plate_id for p in pairs.values()} == set(convnet_home.catalog.plates)  # awkward plates included
    pair = next(iter(pairs.values()))
    table = pq.read_table(pair.artifact_path)
    assert table.schema.field("vector").type.list_size == 24
    for layer, length in (("features.1", 36), ("features.3", 136)):
        values = np.array(table.column(gram_column(layer)).to_pylist(), dtype=np.float32)
        assert values.shape[1] == length and np.isfinite(values).all()
    assert set(table.column("preprocess_tag").to_pylist()) == {pair.preprocess_tag}
    assert "gram=features.1,features.3" in pair.preprocess_tag


def test_checks_pass_and_partitions_say_the_gram_layers(convnet_home, convnet_run):
    checks = convnet_home.instance.get_latest_materialization_event(dg.AssetKey(ASSET))
    assert checks.asset_materialization.metadata["gram_layers"].value == {"features.1": 36, "features.3": 136}
    evaluations = [
        e.dagster_event.event_specific_data
        for e in convnet_home.instance.all_logs(convnet_run.dagster_run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    names = {e.check_name for e in evaluations}
    assert {"grams_finite", "gram_lengths_declared", "vectors_finite", "vector_dim_declared"} <= names
    assert all(e.passed for e in evaluations)


def test_pooled_features_join_the_atlas(convnet_home, convnet_run):
    clip_runs = materialize_pin_ranges(
        convnet_home.defs, convnet_home.instance, job_name("clip_embeddings"), "clip_embeddings", {},
        convnet_home.pins["awb-demo/tiny-clip"], None,
    )  # fmt: skip
    assert all(run.success for run in clip_runs)
    result = materialize_atlas(convnet_home.defs, convnet_home.instance, {"atlas": {"k": 2}}, assets=["atlas"])
    assert result.success
    atlas = convnet_home.instance.get_latest_materialization_event(dg.AssetKey("atlas")).asset_materialization
    assert convnet_home.pins[MODEL] in atlas.metadata["pins"].value


def test_awb_pin_file_pins_copies_and_registers_the_partition(weight_file, tmp_path, capsys):
    from awb_dagster.cli import main

    home = tmp_path / "home"
    assert main(["pin", "demo-tiny-convnext", "--file", str(weight_file), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    pin = PinLock.load(home / "pins.lock.json").active_pins()[0]
    assert f"pinned {MODEL} -> {pin.key} ({weight_file.name}, torchvision 0.29.1" in out
    assert "registered 1 new convnet_pins partition(s)" in out
    assert (home / "weights" / pin.sha / weight_file.name).is_file()
    renamed = tmp_path / "resnet.pth"
    shutil.copy(weight_file, renamed)
    assert main(["pin", "demo-tiny-convnext", "--file", str(renamed), "--home", str(home)]) == 1
    assert "weight files are named tiny_convnext-<sha256 prefix>.pth, not resnet.pth" in capsys.readouterr().err
