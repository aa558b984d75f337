"""Sealed-run verification (`awb runs verify`) and the embedding contract checks, on small
stores written here (no models, no Dagster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from awb_dagster.cli import main
from awb_dagster.provenance.checks import (
    ARTIFACT_CHECKSUMS,
    RECORD_IDS_UNIQUE,
    VECTOR_DIM_DECLARED,
    VECTOR_L2_UNIT_NORM,
    VECTORS_FINITE,
    check_embedding_pairs,
)
from awb_dagster.provenance.records import embedding_table, record_id
from awb_dagster.provenance.store import Manifest, RunStore
from awb_dagster.provenance.verify import verify_run

DIM = 4
PIN = "demo-tiny@0123456789"


def _rows(n: int, run_id: str, salt: str = "") -> list[dict]:
    rows = []
    for i in range(n):
        sha = f"{salt}{i:064d}"[-64:]
        rows.append(
            {
                "record_id": record_id(plate_sha256=sha, model_sha="a" * 40, preprocess_tag="t", scope="plate"),
                "plate_id": f"plate-{salt}{i}",
                "plate_sha256": sha,
                "model_id": "demo/tiny",
                "model_sha": "a" * 40,
                "pin_key": PIN,
                "preprocess_tag": "t",
                "run_id": run_id,
                "scope": "plate",
                "region_ref": None,
            }
        )
    return rows


def _sealed_run(store: RunStore, table_for=None, n: int = 3, salt: str = "") -> Manifest:
    """A sealed run of ``n`` plates in one artifact; ``table_for(rows, run_id)`` may replace the table."""
    run = store.open_run(kind="demo-embeddings")
    rows = _rows(n, run.run_id, salt)
    vectors = np.arange(1, n * DIM + 1, dtype=np.float32).reshape(n, DIM)
    table = table_for(rows, vectors) if table_for else embedding_table(rows, vectors)
    artifact = run.write_table("embeddings", table)
    for row in rows:
        run.add_pair(
            plate_id=row["plate_id"], plate_sha256=row["plate_sha256"], pin_key=PIN,
            preprocess_tag="t", record_ids=[row["record_id"]], artifact=artifact,
        )  # fmt: skip
    return run.seal()


def _writable(path: Path) -> None:
    path.chmod(0o644)  # sealed artifacts are read-only; the tests tamper on purpose


def _flip_byte(path: Path, offset: int = 100) -> None:
    _writable(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_the_altered_and_the_deleted_file(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    intact = _sealed_run(store, salt="1")
    damaged = _sealed_run(store, n=2, salt="2")
    extra = store.open_run(kind="demo-embeddings")
    first = extra.write_bytes("a.bin", b"first file")
    extra.write_bytes("b.bin", b"second file")
    two_files = extra.seal()
    assert verify_run(intact) == [] and verify_run(damaged) == [] and verify_run(two_files) == []

    _flip_byte(damaged.run_dir / damaged.payload["outputs"][0]["path"])
    _writable(two_files.run_dir)
    (two_files.run_dir / first.path).unlink()
    (two_files.run_dir / "added-later.txt").write_text("not sealed")

    altered = verify_run(damaged)
    assert [(p.kind, p.path) for p in altered] == [("altered", "embeddings-00000.parquet")]
    assert damaged.payload["outputs"][0]["sha256"] in altered[0].detail
    assert sorted((p.kind, p.path) for p in verify_run(two_files)) == [
        ("missing", "a.bin"), ("unlisted", "added-later.txt"),
    ]  # fmt: skip

    home = ["--home", str(tmp_path)]
    assert main(["runs", "verify", *home]) == 1
    out = capsys.readouterr().out
    assert f"ok {intact.run_id}" in out
    assert f"FAILED {damaged.run_id}" in out and f"altered {damaged.run_dir / 'embeddings-00000.parquet'}" in out
    assert f"missing {two_files.run_dir / 'a.bin'}" in out
    assert main(["runs", "verify", intact.run_id, *home]) == 0
    assert main([*home, "runs", "verify", intact.run_id]) == 0  # --home before the subcommand holds too
    assert main(["runs", "verify", damaged.run_id, *home]) == 1
    with pytest.raises(SystemExit) as exit_info:  # an unknown run is a user error naming it
        main(["runs", "verify", "no-such-run", *home])
    assert exit_info.value.code == 2 and "no-such-run" in capsys.readouterr().err


def _with_column(table: pa.Table, name: str, values) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, table.schema.field(name), pa.array(values, type=table.schema.field(name).type))


def _nan_vector(rows, vectors):
    vectors = vectors.copy()
    vectors[1, 2] = np.nan
    return embedding_table(rows, vectors)


def _long_unit(rows, vectors):
    table = embedding_table(rows, vectors)
    unit = [list(v) for v in table.column("vector_l2").to_pylist()]
    unit[2] = [x * 2 for x in unit[2]]
    return _with_column(table, "vector_l2", unit)


def _wrong_dim(rows, vectors):
    return embedding_table(rows, np.hstack([vectors, vectors]))


def _duplicate_id(rows, vectors):
    table = embedding_table(rows, vectors)
    ids = table.column("record_id").to_pylist()
    return _with_column(table, "record_id", [ids[0], ids[0], ids[2]])


@pytest.mark.parametrize(
    ("table_for", "failing_checks", "failing_rows"),
    [
        (_nan_vector, {VECTORS_FINITE, VECTOR_L2_UNIT_NORM}, [1]),  # a NaN makes its vector_l2 NaN too
        (_long_unit, {VECTOR_L2_UNIT_NORM}, [2]),
        (_wrong_dim, {VECTOR_DIM_DECLARED}, [0, 1, 2]),
        (_duplicate_id, {RECORD_IDS_UNIQUE}, [0, 1]),  # row 0 twice, row 1's id absent
    ],
)
def test_each_contract_check_names_its_failing_records(tmp_path, table_for, failing_checks, failing_rows):
    store = RunStore(tmp_path)
    manifest = _sealed_run(store, table_for)
    pairs = [manifest.sealed_pair(pair) for pair in manifest.pairs]
    outcomes = check_embedding_pairs(store, pairs, declared_dims={PIN: DIM})
    assert {name for name, outcome in outcomes.items() if not outcome.passed} == failing_checks
    expected = {pairs[i].record_ids[0] for i in failing_rows}
    for name in failing_checks:
        failures = outcomes[name].failures
        assert {f.record_id for f in failures} == expected, name
        assert {f.plate_id for f in failures} == {pairs[i].plate_id for i in failing_rows}, name
        assert all(f.artifact == f"{manifest.run_id}/embeddings-00000.parquet" for f in failures)


def test_healthy_records_pass_and_a_flipped_byte_fails_the_checksum_check(tmp_path):
    store = RunStore(tmp_path)
    manifest = _sealed_run(store)
    pairs = [manifest.sealed_pair(pair) for pair in manifest.pairs]
    outcomes = check_embedding_pairs(store, pairs, declared_dims={PIN: DIM})
    assert all(outcome.passed for outcome in outcomes.values())
    assert outcomes[ARTIFACT_CHECKSUMS].checked == 1 and outcomes[VECTORS_FINITE].checked == 3

    _flip_byte(pairs[0].artifact_path, offset=pairs[0].artifact_path.stat().st_size // 2)
    outcomes = check_embedding_pairs(store, pairs, declared_dims={PIN: DIM})
    (failure,) = outcomes[ARTIFACT_CHECKSUMS].failures
    assert failure.artifact == f"{manifest.run_id}/embeddings-00000.parquet" and failure.detail.startswith("altered")
