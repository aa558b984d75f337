"""The store's index (issue 13, awb_dagster/provenance/store_index.py): it answers as a scan of
every manifest does, is rebuilt when deleted, damaged or contradicted by a manifest, catches up
with runs sealed by a process that did not update it, reads only the manifests it returns, and
stays complete when processes seal at once. Small synthetic stores; no models, no Dagster."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3

import pyarrow as pa
import pytest

from awb_dagster.provenance import manifest as manifest_module
from awb_dagster.provenance import store_index
from awb_dagster.provenance.store import MANIFEST_NAME, RunStore, StoreError
from awb_dagster.provenance.store_index import INDEX_NAME, StoreIndex, scan_find_record, scan_sealed_pairs

PINS = ("tiny-a@0000000001", "tiny-b@0000000002")


def _seal(store: RunStore, plates: range, pin: str, tag: str = "t", salt: str = "") -> list[str]:
    """One sealed run of ``plates`` for ``pin``; two records per pair; returns the record ids."""
    run = store.open_run(kind="index-test")
    ids = [f"rec-{pin[:6]}-{tag}-{salt}{n}-{k}" for n in plates for k in range(2)]
    artifact = run.write_table("records", pa.table({"record_id": ids}))
    for n in plates:
        run.add_pair(
            plate_id=f"plate-{n:03d}", plate_sha256=f"{n:064x}", pin_key=pin, preprocess_tag=tag,
            record_ids=[f"rec-{pin[:6]}-{tag}-{salt}{n}-{k}" for k in range(2)], artifact=artifact,
        )  # fmt: skip
    run.seal()
    return ids


def _store(tmp_path) -> tuple[RunStore, list[str]]:
    """Runs of two pins; plates re-sealed by a later run (the latest wins); one record id in two runs."""
    store = RunStore(tmp_path / "store")
    ids = _seal(store, range(0, 6), PINS[0]) + _seal(store, range(4, 9), PINS[0])
    ids += _seal(store, range(0, 3), PINS[1], tag="u") + _seal(store, range(0, 3), PINS[1], tag="u")
    return store, ids


def _assert_answers_as_a_scan(store: RunStore, ids: list[str]) -> None:
    for pin in PINS:
        for plates in (None, {"plate-001", "plate-005", "plate-404"}):
            assert store.sealed_pairs(pin, plates) == scan_sealed_pairs(store.manifests(), pin, plates)
    for record in ids:
        manifest, pair = store.find_record(record)
        expected = scan_find_record(store.manifests(), record)
        assert (manifest.run_id, pair) == (expected[0].run_id, expected[1])
    with pytest.raises(StoreError, match="is in no sealed run"):
        store.find_record("rec-missing")


def _indexed_runs(store: RunStore) -> set[str]:
    with sqlite3.connect(store.index.path) as db:
        return {run_id for (run_id,) in db.execute("SELECT run_id FROM runs")}


def test_the_index_answers_as_a_full_scan_and_reads_only_the_runs_it_returns(tmp_path, monkeypatch):
    store, ids = _store(tmp_path)
    assert store.index.path == store.root / INDEX_NAME and store.index.path.is_file()  # kept up at sealing
    _assert_answers_as_a_scan(store, ids)
    assert len(store.sealed_pairs(PINS[0])) == 9 and len(store.sealed_pairs(PINS[1])) == 3

    read = []
    monkeypatch.setattr(store_index, "read_manifest", lambda run_dir: read.append(run_dir.name) or manifest_module.read_manifest(run_dir))
    manifest, _ = store.find_record(ids[-1])  # listed by the last two runs: the older one answers
    assert manifest.run_id == scan_find_record(store.manifests(), ids[-1])[0].run_id and read == [manifest.run_id]
    read.clear()
    (pair,) = store.sealed_pairs(PINS[0], {"plate-001"}).values()  # sealed by the first run only
    assert read == [pair.run_id] and pair.record_ids == tuple(ids[2:4])


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "other schema", "rows contradicted"])
def test_a_missing_damaged_or_contradicted_index_is_rebuilt(tmp_path, damage, caplog):
    store, ids = _store(tmp_path)
    path = store.index.path
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not an index at all\0" * 64)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    elif damage == "other schema":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    else:  # every pair points at the wrong position of its manifest
        with sqlite3.connect(path) as db:
            db.execute("UPDATE pairs SET idx = (idx + 1) % 3")
            db.execute("UPDATE records SET idx = idx + 100")
    _assert_answers_as_a_scan(store, ids)
    assert _indexed_runs(store) == {d.name for d in store.run_dirs()}
    if damage != "deleted":
        assert f"{path}: " in caplog.text and "rebuilding it from the manifests" in caplog.text


def test_runs_sealed_or_removed_behind_the_index_back_are_caught_up(tmp_path, monkeypatch, caplog):
    store, ids = _store(tmp_path)
    with monkeypatch.context() as patched:  # a process that seals without touching the index
        patched.setattr(StoreIndex, "update", lambda self: None)
        late = _seal(store, range(7, 12), PINS[1], tag="u", salt="late")
    assert store.find_record(late[-1])[1].plate_id == "plate-011"
    assert store.sealed_pairs(PINS[1], {"plate-011"})[("plate-011", f"{11:064x}", "u")].record_ids == tuple(late[-2:])

    first = store.find_record(ids[0])[0].run_dir  # the first run sealed (run ids sort by second, then at random)
    for path in first.iterdir():
        path.chmod(0o644)
        path.unlink()
    first.rmdir()  # a run moved out of the store
    _assert_answers_as_a_scan(store, ids[12:] + late)
    assert first.name not in _indexed_runs(store) and "answering from" not in caplog.text  # caught up, not scanned

    # A manifest damaged behind the index: skipped by name, like a scan skips it, in a fresh process too.
    damaged = store.find_record(ids[12])[0].run_dir / MANIFEST_NAME  # the second run, of PINS[0]
    damaged.chmod(0o644)
    damaged.write_text("{not json")
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(manifest_module, "_WARNED", set())
    assert all(pair.run_id != damaged.parent.name for pair in store.sealed_pairs(PINS[0]).values())
    monkeypatch.setattr(manifest_module, "_WARNED", set())
    caplog.clear()
    store.sealed_pairs(PINS[1])  # the index already knows it is damaged, and still names it
    assert f"{damaged}: manifest is not valid JSON" in caplog.text


def test_an_index_that_cannot_be_written_answers_from_the_manifests(tmp_path, monkeypatch, caplog):
    store, ids = _store(tmp_path)
    store.index.path.unlink()

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(store.index.lock_path))

    monkeypatch.setattr(store_index, "hold_lock", refused)  # a teammate's read-only home
    _assert_answers_as_a_scan(store, ids)
    assert not store.index.path.exists() and "cannot be written" in caplog.text


def _seal_in_process(root: str, worker: int) -> None:
    store = RunStore(root)
    for batch in range(4):
        _seal(store, range(batch * 3, batch * 3 + 3), PINS[worker % 2], salt=f"w{worker}b{batch}-")


def test_processes_sealing_at_once_leave_a_complete_index(tmp_path):
    store = RunStore(tmp_path / "store")
    _seal(store, range(0, 2), PINS[0], salt="first-")  # the index exists before the race
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_seal_in_process, args=(str(store.root), n)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    runs = {d.name for d in store.run_dirs()}
    assert len(runs) == 13 and _indexed_runs(store) == runs  # before any lookup: the sealers kept it up
    ids = [record for pair in scan_sealed_pairs(store.manifests(), PINS[0]).values() for record in pair.record_ids]
    _assert_answers_as_a_scan(store, ids)
