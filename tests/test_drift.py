"""Pin drift: per-plate cosines between two pins of one model (pure functions), and the
``pin_drift_report`` asset over real sealed embeddings of two revisions of the tiny DINOv2."""

from __future__ import annotations

import shutil

import dagster as dg
import numpy as np
import pytest

from awb_dagster.assets.drift import pin_drift_report
from awb_dagster.atlas.drift import pin_drift
from awb_dagster.atlas.plots import drift_png
from awb_dagster.atlas.spaces import Space, load_space
from awb_dagster.cli import main
from awb_dagster.definitions import build_definitions
from awb_dagster.demo import LoopbackHub, build_tiny_repo, use_hub_endpoint
from awb_dagster.demo.checkpoints import DEMO_LICENSE, DEMO_PIPELINE_TAGS
from awb_dagster.instance import open_instance
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.resources import AwbHome
from awb_dagster.runner import materialize_family

MODEL = "awb-demo/tiny-dinov2"
PLATES = ("audubon_p001_wild-turkey.jpg", "audubon_p421_brown-pelican.jpg", "AWKWARD_grayscale_haeckel_stammbaum_1866.png")


def _space(pin: str, vectors: dict[str, list[float]]) -> Space:
    nodes = tuple(sorted(vectors))
    matrix = np.array([vectors[n] for n in nodes], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return Space(
        pin_key=pin, scope="plate", preprocess_tag="tag", nodes=nodes, plate_ids=nodes,
        plate_sha256s=tuple("0" * 64 for _ in nodes), record_ids=tuple(f"r-{pin}-{n}" for n in nodes),
        vectors=matrix, sources=(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"a": [1, 0], "b": [0, 1]}, {"a": [2, 0], "b": [0, 3]}, {"a": 1.0, "b": 1.0}),  # scale is not drift
        ({"a": [1, 0], "b": [0, 1]}, {"a": [0, 1], "b": [0, -1]}, {"a": 0.0, "b": -1.0}),
        ({"a": [1, 0], "b": [1, 1]}, {"b": [1, 0], "c": [0, 1]}, {"b": 2**-0.5}),  # only plates in both
    ],
)
def test_pin_drift_cosines(before, after, expected):
    drift = pin_drift("m", _space("p1", before), _space("p2", after))
    assert drift.plate_ids == tuple(sorted(expected))
    np.testing.assert_allclose(drift.cosines, [expected[p] for p in drift.plate_ids], atol=1e-6)
    assert drift.summary()["plates"] == len(expected) and drift.label == "p1 -> p2"


def test_most_moved_lists_the_lowest_cosines_first():
    drift = pin_drift(
        "m", _space("p1", {"a": [1, 0], "b": [1, 0], "c": [1, 0]}), _space("p2", {"a": [1, 1], "b": [1, 0], "c": [0, 1]})
    )
    assert [plate for plate, _ in drift.most_moved(2)] == ["c", "a"]
    summary = drift.summary()
    assert summary["min"] == pytest.approx(0.0, abs=1e-6) and summary["max"] == pytest.approx(1.0)
    assert drift_png([drift, drift]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("after", "message"),
    [({"a": [1, 0, 0]}, "2-d vectors"), ({"z": [1, 0]}, "no plate embedded under both")],
)
def test_incomparable_pins_are_named(after, message):
    with pytest.raises(ValueError, match=message) as error:
        pin_drift("m", _space("p1", {"a": [1, 0]}), _space("p2", after))
    assert "p1" in str(error.value) and "p2" in str(error.value)


def test_report_over_two_pins_of_a_model(tmp_path, capsys):
    hub = LoopbackHub(tmp_path / "hub")
    home = ["--home", str(tmp_path / "home")]
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    for name in PLATES:
        shutil.copy(SAMPLE_PLATES_DIR / name, plates_dir / name)

    def commit(seed: int) -> None:
        hub.add_commit(MODEL, build_tiny_repo("dinov2", seed=seed), license=DEMO_LICENSE,
                       pipeline_tag=DEMO_PIPELINE_TAGS["dinov2"], library_name="transformers")  # fmt: skip

    def pin() -> str:
        assert main(["pin", MODEL, "--endpoint", endpoint, *home]) == 0
        return capsys.readouterr().out.split("-> ")[1].split()[0]

    commit(seed=0)
    # use_hub_endpoint restores this process's hub settings, which the run's hub resource changes.
    with hub, use_hub_endpoint(hub.start()) as endpoint:
        first = pin()
        assert main(["plates", "add", str(plates_dir), *home]) == 0
        commit(seed=1)
        second = pin()
        paths = HomePaths(tmp_path / "home")
        instance = open_instance(paths)
        defs = build_definitions(home=str(paths.root), endpoint=endpoint, offline=False, batch_size=4)
        for pin_key in (first, second):
            assert all(run.success for run in materialize_family(defs, instance, "dinov2", pin_key))

    resource = AwbHome(home=str(paths.root))
    result = dg.materialize([pin_drift_report], instance=instance, resources={"home": resource})
    assert result.success
    metadata = result.asset_materializations_for_node("pin_drift_report")[0].metadata
    assert metadata["pin_pairs"].value == 1
    (summary,) = [row.data for row in metadata["summary"].value.records]
    assert (summary["model_id"], summary["from_pin"], summary["to_pin"]) == (MODEL, first, second)
    assert summary["plates"] == len(PLATES)
    assert summary["min"] <= summary["median"] <= summary["max"] < 1.0  # new weights moved every plate

    # The per-plate cosines are those of the sealed vectors themselves.
    plates = {p.plate_id: p.sha256 for p in resource.catalog().plates.values()}
    before, after = (load_space(resource.store(), key, "plate", plates)[0] for key in (first, second))
    expected = dict(zip(before.plate_ids, np.einsum("ij,ij->i", before.vectors, after.vectors)))
    per_plate = {row.data["plate_id"]: row.data["cosine"] for row in metadata["per_plate"].value.records}
    assert per_plate == pytest.approx(expected, abs=1e-5)
    moved = [row.data for row in metadata["most_moved"].value.records]
    assert [row["plate_id"] for row in moved] == sorted(expected, key=expected.get)
    assert metadata["plot"].value.startswith("![per-plate cosine between pins](data:image/png;base64,")
    assert not metadata["skipped"].value.records
    assert set(metadata["source_runs"].value) == {s.run_id for s in (*before.sources, *after.sources)}
