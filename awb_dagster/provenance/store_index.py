"""The store's index (issue 13): record id -> (run, pair) and (pin, plate) -> pairs, kept in
``<store>/index.sqlite`` so that ``awb lineage`` and a step's reuse read the manifests of the
runs they return instead of every manifest of the store (bench/scale.py).

It is never the source of truth:

- **Fresh.** Every lookup first compares the runs the index holds with the store's sealed runs,
  each by its manifest file's inode, size, mtime and ctime. A run sealed since (by a process that
  did not update the index, or one that died before it could), a manifest rewritten since, or a
  run removed since is (re)indexed from its manifest or dropped. A missing index, one that is not
  an SQLite file of this schema, or one whose answer a manifest does not bear out is rebuilt
  from the manifests.
- **Verified.** Every answer is taken from the manifest the index names (only the runs returned
  are read) and checked against it: the pair at the indexed position has the pin, plate or record
  asked for. A damaged manifest is skipped with the store's warning, as a scan skips it.
- **Shared.** Sealing updates the index. Writes hold ``<store>/index.lock``
  (:func:`awb_dagster.locking.hold_lock`), so processes sealing at once take turns; a full
  rebuild is written beside the index and renamed over it. A store whose index cannot be written
  (a teammate's read-only home) is answered by scanning the manifests, as before the index.
"""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import stat
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from awb_dagster.locking import hold_lock
from awb_dagster.provenance.manifest import MANIFEST_NAME, Manifest, ManifestError, SealedPair, read_manifest, warn_damaged

INDEX_NAME = "index.sqlite"
LOCK_NAME = "index.lock"
SCHEMA_VERSION = "1"
_IN_LIMIT = 500  # plate ids per `IN (...)` query; a larger set is filtered from the pin's rows
_LOG = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, stamp TEXT NOT NULL, problem TEXT);
CREATE TABLE pairs (run_id TEXT NOT NULL, idx INTEGER NOT NULL, pin_key TEXT NOT NULL, plate_id TEXT NOT NULL);
CREATE TABLE records (record_id TEXT NOT NULL, run_id TEXT NOT NULL, idx INTEGER NOT NULL);
"""
# Created after a rebuild's rows: sorting them once is faster than keeping an index up row by row.
_INDEXES = """
CREATE INDEX pairs_by_pin_plate ON pairs (pin_key, plate_id);
CREATE INDEX pairs_by_run ON pairs (run_id);
CREATE INDEX records_by_id ON records (record_id);
CREATE INDEX records_by_run ON records (run_id);
"""
_CACHE_KIB = 65536  # SQLite's page cache for writes (default 2 MiB): a 100k-record index exceeds it

PairKey = tuple[str, str, str]  # (plate_id, plate_sha256, preprocess_tag)


class _Unsupported(Exception):
    """The index gave a row its manifest does not bear out: it is rebuilt."""


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while manifests become many small objects (JSON
    has no reference cycles to collect): with a pin of 100k pairs its full passes over every pair
    built so far took most of the lookup and made it grow worse than linearly (bench/scale.py)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def scan_sealed_pairs(
    manifests: Iterable[Manifest], pin_key: str, plate_ids: Collection[str] | None = None
) -> dict[PairKey, SealedPair]:
    """Latest sealed pair per key of one pin, by reading every manifest (oldest first)."""
    found: dict[PairKey, SealedPair] = {}
    with collector_paused():
        for manifest in manifests:
            for pair in manifest.pairs:
                if pair["pin_key"] == pin_key and (plate_ids is None or pair["plate_id"] in plate_ids):
                    found[pair["plate_id"], pair["plate_sha256"], pair["preprocess_tag"]] = manifest.sealed_pair(pair)
    return found


def scan_find_record(manifests: Iterable[Manifest], record_id: str) -> tuple[Manifest, SealedPair] | None:
    """The first sealed pair (oldest run first) listing ``record_id``, by reading every manifest."""
    for manifest in manifests:
        for pair in manifest.pairs:
            if record_id in pair["record_ids"]:
                return manifest, manifest.sealed_pair(pair)
    return None


def _stamp(status: os.stat_result) -> str:
    return f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}"


class StoreIndex:
    """The index of the run store at ``root`` (runs under ``runs_dir``); ``scan`` yields every
    readable manifest, oldest first (:meth:`RunStore.manifests`), for when the index cannot be had."""

    def __init__(self, root: Path, runs_dir: Path, scan: Callable[[], Iterable[Manifest]]):
        self.path = root / INDEX_NAME
        self.lock_path = root / LOCK_NAME
        self.runs_dir = runs_dir
        self._scan = scan

    # Lookups ---------------------------------------------------------------------------------

    def sealed_pairs(self, pin_key: str, plate_ids: Collection[str] | None = None) -> dict[PairKey, SealedPair]:
        """Latest sealed pair per (plate_id, plate_sha256, preprocess_tag) of one pin, only those of
        ``plate_ids`` when given: :func:`scan_sealed_pairs`'s answer, from the manifests indexed."""
        with collector_paused():
            return self._answer(
                lambda db: self._pairs_from(db, pin_key, plate_ids),
                lambda: scan_sealed_pairs(self._scan(), pin_key, plate_ids),
            )

    def find_record(self, record_id: str) -> tuple[Manifest, SealedPair] | None:
        """:func:`scan_find_record`'s answer, reading only the manifests that list ``record_id``."""
        return self._answer(lambda db: self._record_from(db, record_id), lambda: scan_find_record(self._scan(), record_id))

    def update(self) -> None:
        """Bring the index up to the store (after a sealing); a failure is logged, not raised: the
        run is sealed either way, and the next lookup indexes it."""
        try:
            db = self._fresh()
        except (OSError, sqlite3.Error) as exc:
            _LOG.warning("%s: not updated (%s); the next lookup brings it up to the store", self.path, exc)
        else:
            if db is not None:
                db.close()

    def rebuild(self) -> None:
        """Build the index anew from every manifest of the store."""
        with hold_lock(self.lock_path):
            self._rebuild_locked()

    # Answers ---------------------------------------------------------------------------------

    def _answer(self, from_index, from_scan):
        if not self.runs_dir.is_dir():  # nothing sealed yet: nothing to index, nothing created
            return from_scan()
        for attempt in range(2):
            db = self._fresh()
            if db is None:
                return from_scan()
            try:
                return from_index(db)
            except sqlite3.DatabaseError as exc:
                problem = f"cannot be read ({exc})"
            except _Unsupported as exc:
                problem = str(exc)
            finally:
                db.close()
            _LOG.warning("%s: %s; rebuilding it from the manifests", self.path, problem)
            if attempt == 0 and not self._try(self.rebuild):
                break
        _LOG.warning("%s: still not usable; answering from a scan of every manifest", self.path)
        return from_scan()

    def _manifests(self, run_ids: Iterable[str]) -> Iterable[Manifest]:
        """The readable manifests of ``run_ids``, oldest first; a damaged one is skipped by name."""
        for run_id in sorted(set(run_ids)):
            try:
                yield read_manifest(self.runs_dir / run_id)
            except ManifestError as exc:
                warn_damaged(exc)
            except OSError as exc:  # removed since the freshness check: the next lookup drops it
                _LOG.warning("%s: run %s is listed but unreadable (%s); skipped", self.path, run_id, exc)

    def _pairs_from(self, db: sqlite3.Connection, pin_key: str, plate_ids: Collection[str] | None):
        if plate_ids is None or len(plate_ids) > _IN_LIMIT:
            rows = db.execute("SELECT run_id, idx, plate_id FROM pairs WHERE pin_key = ?", (pin_key,)).fetchall()
            if plate_ids is not None:
                rows = [row for row in rows if row[2] in plate_ids]
        else:  # at most _IN_LIMIT ids: one query
            ids = list(plate_ids)
            query = f"SELECT run_id, idx, plate_id FROM pairs WHERE pin_key = ? AND plate_id IN ({','.join('?' * len(ids))})"
            rows = db.execute(query, (pin_key, *ids)).fetchall()
        by_run: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for run_id, idx, plate_id in rows:
            by_run[run_id].append((idx, plate_id))
        found: dict[PairKey, SealedPair] = {}
        for manifest in self._manifests(by_run):
            for idx, plate_id in sorted(by_run[manifest.run_id]):
                pair = manifest.pairs[idx] if idx < len(manifest.pairs) else None
                if pair is None or pair["pin_key"] != pin_key or pair["plate_id"] != plate_id:
                    raise _Unsupported(f"pair {idx} of run {manifest.run_id} is not plate {plate_id} of {pin_key}")
                found[pair["plate_id"], pair["plate_sha256"], pair["preprocess_tag"]] = manifest.sealed_pair(pair)
        return found

    def _record_from(self, db: sqlite3.Connection, record_id: str):
        rows = db.execute("SELECT run_id, idx FROM records WHERE record_id = ?", (record_id,)).fetchall()
        positions = defaultdict(list)
        for run_id, idx in rows:
            positions[run_id].append(idx)
        for manifest in self._manifests(positions):
            for idx in sorted(positions[manifest.run_id]):
                pair = manifest.pairs[idx] if idx < len(manifest.pairs) else None
                if pair is None or record_id not in pair["record_ids"]:
                    raise _Unsupported(f"pair {idx} of run {manifest.run_id} does not list record {record_id}")
            # The first pair of the oldest run listing it, as a scan finds it.
            first = next(i for i, pair in enumerate(manifest.pairs) if record_id in pair["record_ids"])
            return manifest, manifest.sealed_pair(manifest.pairs[first])
        return None

    # Freshness -------------------------------------------------------------------------------

    def _sealed_runs(self) -> dict[str, str]:
        """Every run directory with a manifest file, with that file's stamp."""
        stamps: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.runs_dir))
        except FileNotFoundError:
            return stamps
        for entry in entries:
            try:
                if entry.is_dir():
                    status = os.stat(os.path.join(entry.path, MANIFEST_NAME))
                    if stat.S_ISREG(status.st_mode):
                        stamps[entry.name] = _stamp(status)
            except (FileNotFoundError, NotADirectoryError):
                continue
        return stamps

    def _connect(self) -> sqlite3.Connection:
        """The index, checked to be one of this schema; raises sqlite3.DatabaseError otherwise."""
        db = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=rw", uri=True, timeout=60)  # never creates it
        try:
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version != (SCHEMA_VERSION,):
                raise sqlite3.DatabaseError(f"schema {version} is not {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _fresh(self) -> sqlite3.Connection | None:
        """A connection to the index, brought up to the store; None when the index cannot be
        written or read (the caller scans the manifests)."""
        try:
            db = self._connect()
            indexed = dict(db.execute("SELECT run_id, stamp FROM runs"))
        except sqlite3.DatabaseError as exc:  # missing (cannot open), not SQLite, another schema
            if self.path.exists():
                _LOG.warning("%s: cannot be used (%s); rebuilding it from the manifests", self.path, exc)
            if not self._try(self.rebuild):
                return None
            return self._fresh_after_rebuild()
        if indexed != self._sealed_runs():
            db.close()
            if not self._try(self._catch_up):
                return None
            return self._fresh_after_rebuild()
        self._warn_damaged(db)
        return db

    def _fresh_after_rebuild(self) -> sqlite3.Connection | None:
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            _LOG.warning("%s: rebuilt but unreadable (%s); answering from the manifests", self.path, exc)
            return None
        self._warn_damaged(db)
        return db

    def _try(self, action: Callable[[], None]) -> bool:
        try:
            action()
        except (OSError, sqlite3.Error) as exc:
            _LOG.warning("%s: cannot be written (%s); answering from the manifests", self.path, exc)
            return False
        return True

    def _warn_damaged(self, db: sqlite3.Connection) -> None:
        for run_id, problem in db.execute("SELECT run_id, problem FROM runs WHERE problem IS NOT NULL"):
            warn_damaged(ManifestError(self.runs_dir / run_id / MANIFEST_NAME, problem))

    # Writes (under the lock) -----------------------------------------------------------------

    def _catch_up(self) -> None:
        """Index the runs sealed or rewritten since, drop the runs removed since."""
        with hold_lock(self.lock_path):
            try:
                db = self._connect()
            except sqlite3.DatabaseError:
                self._rebuild_locked()
                return
            try:
                db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
                with db:
                    indexed = dict(db.execute("SELECT run_id, stamp FROM runs"))
                    sealed = self._sealed_runs()
                    stale = [run_id for run_id, stamp in indexed.items() if sealed.get(run_id) != stamp]
                    for run_id in stale:
                        for table in ("runs", "pairs", "records"):
                            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                    for run_id in sorted(sealed):
                        if indexed.get(run_id) != sealed[run_id]:
                            self._index_run(db, run_id, sealed[run_id])
            finally:
                db.close()

    def _rebuild_locked(self) -> None:
        partial = self.path.with_name(f"{INDEX_NAME}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        db = sqlite3.connect(partial)
        try:
            db.execute("PRAGMA journal_mode = OFF")  # a partial file: one a crash leaves is never used
            db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            db.executescript(_SCHEMA)
            with db:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                for run_id, stamp in sorted(self._sealed_runs().items()):
                    self._index_run(db, run_id, stamp)
            db.executescript(_INDEXES)
        finally:
            db.close()
        partial.chmod(0o644)  # a team sharing the home reads it
        os.replace(partial, self.path)

    def _index_run(self, db: sqlite3.Connection, run_id: str, stamp: str) -> None:
        try:
            manifest = read_manifest(self.runs_dir / run_id)
        except ManifestError as exc:  # kept as damaged: named by every lookup, as a scan names it
            db.execute("INSERT INTO runs VALUES (?, ?, ?)", (run_id, stamp, exc.problem))
            warn_damaged(exc)
            return
        except FileNotFoundError:  # removed since it was listed
            return
        db.execute("INSERT INTO runs VALUES (?, ?, NULL)", (run_id, stamp))
        db.executemany(
            "INSERT INTO pairs VALUES (?, ?, ?, ?)",
            ((run_id, idx, pair["pin_key"], pair["plate_id"]) for idx, pair in enumerate(manifest.pairs)),
        )
        db.executemany(
            "INSERT INTO records VALUES (?, ?, ?)",
            ((record, run_id, idx) for idx, pair in enumerate(manifest.pairs) for record in pair["record_ids"]),
        )
