"""The U^2-Net foreground prior (seed 5.4): carvekit's recipe reproduced exactly, the published weight
layout loaded strictly (and anything else refused), the mask contract on the shared plates (awkward
ones included) and the IoU with the union of a SAM pin's sealed masks."""

from __future__ import annotations

import io
import random
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.tiny_u2net import U2NET_WEIGHT_FILE, tiny_u2net_files
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.u2net import TINY_LAYERS, ForegroundSegmenter, postprocess, preprocess, u2net_architecture
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.foreground import FOREGROUND_ASSET
from awb_dagster.provenance.checks import check_mask_pairs
from awb_dagster.provenance.foreground import check_foreground_pairs, sam_union
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.rows import mask_sha256
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.runner import materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

U2NET = "awb-demo/tiny-u2net"
SAM = "awb-demo/tiny-sam"
SAM_CONFIG = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "box_nms_thresh": 0.99, "max_working_side": 256}  # fmt: skip
PLATES = ("AWKWARD_grayscale_haeckel_stammbaum_1866.png", "AWKWARD_rgba-transparent_haeckel_radiolarian.png",
          "audubon_p026_carolina-parrot.jpg")  # fmt: skip


def _tiny_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.load(io.BytesIO(tiny_u2net_files()[U2NET_WEIGHT_FILE]), weights_only=True)


def test_pre_and_post_processing_are_carvekits(tmp_path, monkeypatch):
    """The adapter's tensors and saliency maps equal carvekit 4.1.2's own U2NET wrapper's, byte for byte."""
    monkeypatch.setenv("HOME", str(tmp_path))  # carvekit.ml.files makes ~/.cache/carvekit when imported
    python_random = random.getstate()
    with torch.random.fork_rng(devices=[]):  # importing carvekit.ml seeds the generators (fix_seed)
        from carvekit.ml.wrap.u2net import U2NET
    random.setstate(python_random)

    carvekit = U2NET(layers_cfg=TINY_LAYERS, device="cpu", input_image_size=64, load_pretrained=False)
    state = _tiny_state()
    carvekit.load_state_dict(state)
    ours = u2net_architecture(TINY_LAYERS)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    for name in PLATES:
        image, _ = load_plate(SAMPLE_PLATES_DIR / name, _sha(name), max_pixels=10**8)
        tensor = preprocess(image, 64)
        assert torch.equal(tensor, carvekit.data_preprocessing(image))
        with torch.inference_mode():
            d0 = ours(tensor)[0][0]
            if name == PLATES[0]:  # the same class and weights: one plate shows the forward is carvekit's
                assert torch.equal(d0, super(U2NET, carvekit).__call__(tensor)[0][0])
        expected = np.asarray(U2NET.data_postprocessing(d0, image))
        assert np.array_equal(postprocess(d0, image.size), expected) and expected.shape == (image.height, image.width)
    assert np.array_equal(postprocess(torch.zeros(1, 8, 8), (5, 3)), np.zeros((3, 5), np.uint8))  # constant map


def _sha(name: str) -> str:
    import hashlib

    return hashlib.sha256((SAMPLE_PLATES_DIR / name).read_bytes()).hexdigest()


def test_tiny_checkpoint_is_the_published_layout():
    """A legacy (non-zip) torch pickle of a plain state dict: carvekit's module names, no
    num_batches_tracked, float32 only; the same seed gives the same bytes."""
    data = tiny_u2net_files()[U2NET_WEIGHT_FILE]
    assert not zipfile.is_zipfile(io.BytesIO(data))
    state = _tiny_state()
    assert type(state).__name__ == "OrderedDict" and {t.dtype for t in state.values()} == {torch.float32}
    names = set(u2net_architecture(TINY_LAYERS).state_dict())
    assert set(state) == {n for n in names if not n.endswith("num_batches_tracked")}
    assert {n.split(".")[0] for n in state} == {f"stage{i}" for i in range(1, 7)} | {f"stage{i}d" for i in range(1, 6)} | {
        f"side{i}" for i in range(1, 7)} | {"outconv"}  # fmt: skip
    first, second = (_seeded_file() for _ in range(2))
    assert first == second


def _seeded_file() -> bytes:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tiny_u2net_files()[U2NET_WEIGHT_FILE]


def test_the_real_row_loads_only_carvekits_file(loopback_hub, tmp_path):
    """Carve/u2net-universal goes through the same code: a full_weights.pth that is not the file carvekit's
    checksum names is refused before it is unpickled, and a file of another layout is refused by the strict load."""
    registry = Registry.load()
    real = registry.get("Carve/u2net-universal").instrument
    assert real.sealed_runs and real.weight_id == U2NET_WEIGHT_FILE
    loopback_hub.hub.add_commit("Carve/u2net-universal", tiny_u2net_files(), license="apache-2.0")
    pin = capture_pin(real, endpoint=loopback_hub.endpoint)
    with pytest.raises(InstrumentError, match=r"sha512 .* is not carvekit 4\.1\.2's checksum of full_weights\.pth"):
        ForegroundSegmenter(real, pin, device="cpu", cache_dir=tmp_path)
    demo = registry.get(U2NET).instrument
    buffer = io.BytesIO()
    torch.save({"stage1.rebnconvin.conv_s1.weight": torch.zeros(2, 3, 3, 3)}, buffer)
    loopback_hub.hub.add_commit("awb-tests/not-a-u2net", {U2NET_WEIGHT_FILE: buffer.getvalue()}, license="apache-2.0")
    from dataclasses import replace

    other = replace(demo, id="awb-tests/not-a-u2net")
    with pytest.raises(InstrumentError, match=r"not a U\^2-Net state dict of carvekit's U2NETArchitecture"):
        ForegroundSegmenter(other, capture_pin(other, endpoint=loopback_hub.endpoint), device="cpu", cache_dir=tmp_path)


# --- the asset end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(loopback_hub, tmp_path_factory) -> DemoHome:
    return make_demo_home(loopback_hub, tmp_path_factory, "foreground", [U2NET, SAM])


def _run(home: DemoHome, asset: str, repo: str, plate_ids=None, **config):
    runs = materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, config, home.pins[repo], plate_ids)
    assert runs and all(r.success for r in runs)
    return runs


def _plate_id(home: DemoHome, file_name: str) -> str:
    return next(p.plate_id for p in home.catalog.plates.values() if p.path.name == file_name)


def test_foreground_masks_hold_the_contract_and_agree_with_sam(home):
    store, sam_pin, u2net_pin = home.store, home.pins[SAM], home.pins[U2NET]
    transparent = _plate_id(home, PLATES[1])
    _run(home, FOREGROUND_ASSET, U2NET, sam_pin=sam_pin)  # no SAM masks sealed yet: null agreement
    _run(home, "sam_masks", SAM, [transparent], **SAM_CONFIG)
    _run(home, FOREGROUND_ASSET, U2NET, sam_pin=sam_pin)  # the SAM set is in the tag: that plate alone runs again
    runs: dict[str, list] = {}
    for pair in store.sealed_pairs(u2net_pin).values():
        runs.setdefault(pair.plate_id, []).append(pair)
    assert set(runs) == set(home.catalog.plates)  # awkward plates included
    assert len(runs[transparent]) == 2 and all(len(v) == 1 for k, v in runs.items() if k != transparent)
    pairs = {plate_id: max(v, key=lambda p: p.run_id) for plate_id, v in runs.items()}
    sizes = {p.sha256: (p.height, p.width) for p in home.catalog.plates.values()}
    for outcome in (*check_mask_pairs(pairs.values(), sizes).values(), *check_foreground_pairs(pairs.values(), sizes).values()):
        assert outcome.passed and outcome.checked == len(pairs), outcome.failures
    (sam,) = store.sealed_pairs(sam_pin).values()
    for plate_id, pair in pairs.items():
        plate = home.catalog.plates[plate_id]
        (row,) = pq.read_table(pair.artifact_path).to_pylist()
        mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")}).astype(bool)
        assert mask.shape == (plate.height, plate.width) and mask_sha256(mask) == row["mask_sha256"]
        assert row["foreground_fraction"] == mask.sum() / mask.size and row["sam_pin"] == sam_pin
        _, opaque = load_plate(plate.path, plate.sha256, max_pixels=10**8)
        if opaque is not None:
            assert not (mask & ~opaque).any() and (~opaque).any()
        if plate_id == transparent:
            union = sam_union(pq.read_table(sam.artifact_path).to_pylist(), mask.shape)
            assert (row["sam_run_id"], row["sam_artifact_sha256"]) == (sam.run_id, sam.artifact_sha256)
            assert row["sam_union_iou"] == pytest.approx((mask & union).sum() / (mask | union).sum())
            assert f"agree=sam:{sam_pin}@{sam.run_id}" in row["preprocess_tag"]
        else:
            assert row["sam_run_id"] is None and row["sam_union_iou"] is None and "@none" in row["preprocess_tag"]
    info = lineage(store, pairs[transparent].record_ids[0])
    assert info["model"]["model_id"] == U2NET and info["plate"]["sha256"] == pairs[transparent].plate_sha256
