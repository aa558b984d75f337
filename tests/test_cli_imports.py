"""The read-only `awb` commands (registry, plates list, lineage, runs, runs verify) never import
torch, transformers or Dagster: each runs here in a fresh interpreter under ``-X importtime``,
whose report names every module the command imported. The home is written here: a plate
catalog and one sealed run with one embedding record (no models, no hub)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR, PlateCatalog
from awb_dagster.provenance.records import embedding_table, record_id
from awb_dagster.provenance.store import RunStore

HEAVY = ("torch", "transformers", "dagster")
PIN = "demo-tiny-clip@0123456789"


def _seal_one_record(paths: HomePaths, catalog: PlateCatalog) -> str:
    plate = next(iter(catalog.plates.values()))
    run = RunStore(paths.store).open_run(kind="clip-embeddings")
    rid = record_id(plate_sha256=plate.sha256, model_sha="a" * 40, preprocess_tag="t", scope="plate")
    run.add_instrument(
        {"model_id": "awb-demo/tiny-clip", "sha": "a" * 40, "pin_key": PIN, "license": "mit", "failure_modes": []}
    )
    run.add_plate({"plate_id": plate.plate_id, "sha256": plate.sha256, "source_paths": [str(plate.path)]})
    row = {
        "record_id": rid, "plate_id": plate.plate_id, "plate_sha256": plate.sha256, "model_id": "awb-demo/tiny-clip",
        "model_sha": "a" * 40, "pin_key": PIN, "preprocess_tag": "t", "run_id": run.run_id, "scope": "plate",
        "region_ref": None,
    }  # fmt: skip
    artifact = run.write_table("embeddings", embedding_table([row], np.ones((1, 4), dtype=np.float32)))
    run.add_pair(
        plate_id=plate.plate_id, plate_sha256=plate.sha256, pin_key=PIN, preprocess_tag="t",
        record_ids=[rid], artifact=artifact,
    )  # fmt: skip
    run.seal()
    return rid


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> tuple[Path, str]:
    paths = HomePaths(tmp_path_factory.mktemp("light-home"))
    catalog = PlateCatalog.load(paths.catalog)
    catalog.scan([SAMPLE_PLATES_DIR])
    catalog.save()
    return paths.root, _seal_one_record(paths, catalog)


def _imported_modules(argv: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "awb_dagster.cli", *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Lines read "import time: <self us> | <cumulative us> | <indent><module>".
    modules = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    return {m for m in modules if m != "package"}, result


@pytest.mark.parametrize(
    "argv",
    [
        ["lineage", "{record}"],
        ["lineage", "{record}", "--json"],
        ["runs"],
        ["runs", "verify"],
        ["registry", "list"],
        ["registry", "show", "awb-demo/tiny-clip"],
        ["registry", "check"],
        ["plates", "list"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_light_command_imports_no_model_stack(home, argv):
    root, record = home
    modules, result = _imported_modules([a.format(record=record) for a in argv] + ["--home", str(root)])
    errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    assert result.returncode == 0, errors
    assert "awb_dagster.provenance.report" in modules  # the import report was read
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"`awb {' '.join(argv)}` imported {heavy[:10]}"


def test_lineage_output_is_the_record(home):
    root, record = home
    result = subprocess.run(
        [sys.executable, "-m", "awb_dagster.cli", "lineage", record, "--home", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"record      {record} (plate, 4-d)"
    assert "(verified)" in result.stdout


def test_plates_add_imports_no_model_stack(home, tmp_path):
    """`awb plates add` opens the Dagster instance to register partitions, but loads no model code."""
    from PIL import Image

    root, _ = home
    Image.new("RGB", (64, 80), (200, 180, 150)).save(tmp_path / "added_plate.png")
    modules, result = _imported_modules(["plates", "add", str(tmp_path), "--home", str(root)])
    errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    assert result.returncode == 0, errors
    assert "dagster" in modules  # the partitions were synced through the instance
    model_stack = sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers", "torchvision"))
    assert not model_stack, f"`awb plates add` imported {model_stack[:10]}"
