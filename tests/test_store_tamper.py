"""The store against a hostile or careless hand (issue 10, item 8): a consistently edited
manifest is named by the seal log, a damaged manifest is skipped by name while every other run
stays usable, run ids that are paths are refused, and a shared home is readable. Small stores
written here; no models, no Dagster."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from awb_dagster.atomic import write_json_atomic
from awb_dagster.cli import main
from awb_dagster.provenance.lineage import lineage
from awb_dagster.provenance.records import embedding_table, record_id
from awb_dagster.provenance.store import MANIFEST_NAME, Manifest, RunStore

PIN = "demo-tiny@0123456789"


def _sealed_run(store: RunStore, salt: str) -> Manifest:
    """One plate, one embedding, with the instrument and plate a lineage trace reads."""
    run = store.open_run(kind="demo-embeddings")
    sha = f"{salt:0>64}"
    row = {
        "record_id": record_id(plate_sha256=sha, model_sha="a" * 40, preprocess_tag="t", scope="plate"),
        "plate_id": f"plate-{salt}", "plate_sha256": sha, "model_id": "demo/tiny", "model_sha": "a" * 40,
        "pin_key": PIN, "preprocess_tag": "t", "run_id": run.run_id, "scope": "plate", "region_ref": None,
    }  # fmt: skip
    run.add_instrument(
        {"model_id": "demo/tiny", "sha": "a" * 40, "pin_key": PIN, "license": "mit", "failure_modes": []}
    )
    run.add_plate({"plate_id": row["plate_id"], "sha256": sha, "source_paths": [f"/plates/{salt}.jpg"]})
    artifact = run.write_table("embeddings", embedding_table([row], np.ones((1, 4), dtype=np.float32)))
    run.add_pair(
        plate_id=row["plate_id"], plate_sha256=sha, pin_key=PIN, preprocess_tag="t",
        record_ids=[row["record_id"]], artifact=artifact,
    )  # fmt: skip
    return run.seal()


def _rewrite(path: Path, text: str) -> None:
    path.chmod(0o644)  # sealed files are read-only; the tests tamper on purpose
    path.write_text(text)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_consistently_edited_manifest_is_named_and_not_verified(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    honest, forged = _sealed_run(store, "1"), _sealed_run(store, "2")
    home = ("--home", str(tmp_path))
    assert _cli(capsys, "runs", "verify", *home)[0] == 0

    # The license is changed; the artifacts and every hash the manifest lists stay coherent.
    payload = dict(forged.payload, instruments=[dict(forged.payload["instruments"][0], license="FORGED")])
    _rewrite(forged.run_dir / MANIFEST_NAME, json.dumps(payload))
    code, out, err = _cli(capsys, "runs", "verify", *home)
    assert code == 1 and f"ok {honest.run_id}" in out and f"FAILED {forged.run_id}" in out
    assert f"manifest altered {forged.run_dir / MANIFEST_NAME}" in out and "edited after sealing" in out

    record = forged.pairs[0]["record_ids"][0]
    info = lineage(store, record)
    assert info["model"]["license"] == "FORGED" and info["artifact"]["verified"] is False
    code, out, _ = _cli(capsys, "lineage", record, *home)
    assert code == 0 and "(verified)" not in out and "manifest altered" in out
    assert "(verified)" in _cli(capsys, "lineage", honest.pairs[0]["record_ids"][0], *home)[1]


def test_an_edited_seal_log_line_breaks_the_chain(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    first, second = _sealed_run(store, "1"), _sealed_run(store, "2")
    lines = store.seal_log_path.read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [first.run_id, second.run_id]
    edited = json.loads(lines[0]) | {"manifest_sha256": "f" * 64}
    store.seal_log_path.write_text("\n".join([json.dumps(edited, sort_keys=True), lines[1]]) + "\n")
    code, out, _ = _cli(capsys, "runs", "verify", "--home", str(tmp_path))
    assert code == 1
    assert f"seal log broken: {store.seal_log_path} line 2 (run {second.run_id})" in out
    assert f"FAILED {first.run_id}" in out  # its manifest no longer matches the edited line either


@pytest.mark.parametrize(
    ("damage", "named"),
    [("{not json", "not valid JSON"), ('{"run_id": "RUN", "pairs": []}', "no `outputs` list")],
)
def test_a_damaged_manifest_is_named_and_every_other_run_stays_usable(tmp_path, capsys, damage, named):
    store = RunStore(tmp_path / "store")
    good, damaged = _sealed_run(store, "1"), _sealed_run(store, "2")
    _rewrite(damaged.run_dir / MANIFEST_NAME, damage.replace("RUN", damaged.run_id))
    home = ("--home", str(tmp_path))

    assert [m.run_id for m in store.manifests()] == [good.run_id]
    assert {p.run_id for p in store.sealed_pairs(PIN).values()} == {good.run_id}  # what `awb run` reuses
    assert lineage(store, good.pairs[0]["record_ids"][0])["artifact"]["verified"]
    code, out, _ = _cli(capsys, "runs", *home)
    assert code == 0 and good.run_id in out and f"damaged (skipped by every command): {damaged.run_dir}" in out
    code, out, _ = _cli(capsys, "runs", "verify", *home)
    assert code == 1 and f"ok {good.run_id}" in out and f"DAMAGED {damaged.run_dir / MANIFEST_NAME}: " in out
    assert named in out
    code, _, err = _cli(capsys, "runs", "verify", damaged.run_id, *home)
    assert code == 2 and err.startswith(f"error: {damaged.run_dir / MANIFEST_NAME}: ") and named in err


@pytest.mark.parametrize("run_id", ["../../../x", "..", "/etc", "runs/../x"])
def test_a_run_id_that_is_a_path_is_refused(tmp_path, capsys, run_id):
    outside = tmp_path / "x"
    outside.mkdir()
    write_json_atomic(outside / MANIFEST_NAME, {"run_id": "x", "outputs": []})
    code, _, err = _cli(capsys, "runs", "verify", run_id, "--home", str(tmp_path / "a" / "b"))
    assert code == 2 and f"{run_id!r} is not a run id" in err


def test_a_shared_home_is_readable_and_sealed_files_read_only(tmp_path):
    store = RunStore(tmp_path / "store")
    manifest = _sealed_run(store, "1")
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(manifest.run_dir / MANIFEST_NAME) == 0o444
    assert mode(manifest.run_dir / manifest.payload["outputs"][0]["path"]) == 0o444
    assert mode(store.seal_log_path) & 0o044 == 0o044
    write_json_atomic(tmp_path / "pins.lock.json", {})  # the lock and the catalog are written this way
    assert mode(tmp_path / "pins.lock.json") == 0o644


def test_runs_sealed_before_the_seal_log_are_reported_then_adopted(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    kept, altered = _sealed_run(store, "1"), _sealed_run(store, "2")
    store.seal_log_path.unlink()  # a home sealed before the log existed
    artifact = altered.run_dir / altered.payload["outputs"][0]["path"]
    artifact.chmod(0o644)
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")
    home = ("--home", str(tmp_path))

    code, out, _ = _cli(capsys, "runs", "verify", *home)
    assert code == 1 and out.count("unlogged ") == 2 and "sealed before the store had a seal log" in out
    code, out, _ = _cli(capsys, "runs", "verify", "--adopt", *home)
    assert code == 1  # the altered run is not adopted: its files do not match its manifest
    assert f"adopted {kept.run_id} (seal log line 1)" in out and f"FAILED {altered.run_id}" in out
    assert list(store.seal_log().entries) == [kept.run_id]
    code, out, _ = _cli(capsys, "runs", "verify", kept.run_id, *home)
    assert code == 0 and f"ok {kept.run_id}" in out
