"""The seal log: an append-only, hash-chained record of every sealed manifest.

``<store>/seal.log`` holds one JSON line per sealing: ``run_id``, ``manifest_sha256`` (the
manifest file's bytes as sealed), ``sealed_at`` and ``prev``, the sha256 of the previous line's
bytes (:data:`GENESIS` for the first line). A manifest edited after sealing, even consistently
(hashes kept coherent), no longer matches its line; an edited or deleted line breaks ``prev`` of
the line after it. Appends hold an exclusive ``flock`` on the log, so concurrent sealers of one
home write whole lines in turn.

Tamper-evident, not tamper-proof: whoever rewrites a manifest *and* every log line from its
entry to the end goes unnoticed unless the chain's head was kept elsewhere; ``awb runs verify``
prints the head so that it can be.

Runs sealed before a store had a log (or whose sealing died between the manifest and its line)
are *unlogged*: verify reports them, and ``awb runs verify --adopt`` appends a line for each one
whose artifacts still match its manifest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

SEAL_LOG_NAME = "seal.log"
GENESIS = "0" * 64
_FIELDS = ("run_id", "manifest_sha256", "sealed_at", "prev")


@dataclass(frozen=True)
class SealEntry:
    """One line of the seal log."""

    line: int  # 1-based
    run_id: str
    manifest_sha256: str
    sealed_at: str
    digest: str  # sha256 of this line's bytes: the next line's ``prev``


@dataclass
class SealLog:
    """The log as read: the entry of each run, and every place the chain is broken."""

    path: Path
    entries: dict[str, SealEntry] = field(default_factory=dict)
    breaks: list[str] = field(default_factory=list)
    head: str = GENESIS
    exists: bool = False


def _line_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def read_seal_log(path: Path) -> SealLog:
    """Parse ``path`` and check its chain; a missing log is an empty one (``exists`` False)."""
    log = SealLog(path)
    if not path.is_file():
        return log
    log.exists = True
    prev = GENESIS
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path} line {number}"
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in _FIELDS):
                raise ValueError(f"expected an object with string fields {', '.join(_FIELDS)}")
        except ValueError as exc:
            log.breaks.append(f"{where}: not a seal record ({exc}); the log was edited or truncated")
            prev = _line_digest(raw)
            continue
        if record["prev"] != prev:
            log.breaks.append(
                f"{where} (run {record['run_id']}): prev {record['prev'][:16]}… does not chain to the line "
                f"before it ({prev[:16]}…); a line before it was edited, inserted or removed"
            )
        if record["run_id"] in log.entries:
            log.breaks.append(f"{where}: run {record['run_id']} is sealed a second time (first on line "
                              f"{log.entries[record['run_id']].line})")  # fmt: skip
        prev = _line_digest(raw)
        log.entries.setdefault(
            record["run_id"],
            SealEntry(number, record["run_id"], record["manifest_sha256"], record["sealed_at"], prev),
        )
    log.head = prev
    return log


def append_seal(path: Path, *, run_id: str, manifest_sha256: str, sealed_at: str) -> SealEntry:
    """Append one chained line for ``run_id`` under an exclusive lock, fsynced before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        handle.seek(0)
        existing = handle.read()
        lines = existing.splitlines()
        prev = _line_digest(lines[-1]) if lines else GENESIS
        record = {"run_id": run_id, "manifest_sha256": manifest_sha256, "sealed_at": sealed_at, "prev": prev}
        raw = json.dumps(record, sort_keys=True).encode("utf-8")
        # A torn last line (a crash mid-append) stays its own line, reported by read_seal_log.
        handle.write((b"\n" if existing and not existing.endswith(b"\n") else b"") + raw + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return SealEntry(len(lines) + 1, run_id, manifest_sha256, sealed_at, _line_digest(raw))
