"""The sealed run store (DESIGN.md section 5).

Layout: ``<root>/runs/<run_id>/`` holds append-only artifacts and, once the run is sealed,
``run.manifest.json``. The manifest is written last and atomically, so a run directory
without one is an interrupted run and is never read as complete. Sealing then appends the
manifest's sha256 to ``<root>/seal.log`` (:mod:`awb_dagster.provenance.seal_log`), which
``awb runs verify`` checks manifests against.

A manifest that cannot be read (not JSON, a required field missing, a path leaving its run
directory) is skipped with a warning naming it: one damaged run never makes the others
unusable. Files are world-readable and read-only once sealed (0444), so a team sharing a home
can read each other's runs. Lookups by record id and by (pin, plate) go through
``<root>/index.sqlite`` (:mod:`awb_dagster.provenance.store_index`), rebuilt from the manifests
whenever it is missing, behind or damaged, and never trusted without reading the manifest it names.
"""

from __future__ import annotations

import hashlib
import platform
import re
import stat
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.atomic import write_json_atomic
from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.manifest import (  # noqa: F401 (re-exported: the store's readers import them from here)
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    SealedPair,
    StoreError,
    read_manifest,
    warn_damaged,
)
from awb_dagster.provenance.seal_log import SEAL_LOG_NAME, SealEntry, SealLog, append_seal, read_seal_log
from awb_dagster.provenance.store_index import StoreIndex

MANIFEST_VERSION = 1
_TRACKED_LIBRARIES = (
    "awb-dagster",
    "dagster",
    "torch",
    "torchvision",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "pillow",
    "numpy",
    "pyarrow",
    "polars",
    "matplotlib",
)

# What open_run makes: <stamp>-<kind>-<hex>. Anything else (a path, "..") is refused.
_RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _make_read_only(path: Path) -> None:
    """0444: sealed files are read-only for everyone and readable by a team sharing the home."""
    path.chmod((path.stat().st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@dataclass(frozen=True)
class Artifact:
    """One file of a run, as listed in its manifest."""

    path: str  # relative to the run directory
    sha256: str
    rows: int
    bytes: int


@dataclass
class OpenRun:
    """A run being written. Artifacts are created exclusively (never overwritten);
    :meth:`seal` writes the manifest last and makes every file read-only."""

    store: RunStore
    run_id: str
    run_dir: Path
    header: dict[str, Any]
    instruments: list[dict[str, Any]] = field(default_factory=list)
    plates: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[Artifact] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    sealed: bool = False

    def add_instrument(self, description: dict[str, Any]) -> None:
        self.instruments.append(description)

    def add_plate(self, plate: dict[str, Any]) -> None:
        self.plates.setdefault(plate["plate_id"], plate)

    def write_table(self, stem: str, table: pa.Table) -> Artifact:
        """Write ``<stem>-NNNNN.parquet`` (next free part number) and record its checksum."""
        part = sum(1 for a in self.outputs if a.path.startswith(f"{stem}-"))
        relpath = f"{stem}-{part:05d}.parquet"
        path = self.run_dir / relpath
        with open(path, "xb") as handle:  # exclusive: an artifact is never rewritten
            pq.write_table(table, handle, compression="zstd")
        artifact = Artifact(relpath, sha256_file(path), table.num_rows, path.stat().st_size)
        self.outputs.append(artifact)
        return artifact

    def write_bytes(self, relpath: str, data: bytes, rows: int = 0) -> Artifact:
        path = self.run_dir / relpath
        with open(path, "xb") as handle:
            handle.write(data)
        artifact = Artifact(relpath, hashlib.sha256(data).hexdigest(), rows, len(data))
        self.outputs.append(artifact)
        return artifact

    def add_pair(
        self,
        *,
        plate_id: str,
        plate_sha256: str,
        pin_key: str,
        preprocess_tag: str,
        record_ids: list[str],
        artifact: Artifact,
    ) -> None:
        self.pairs.append(
            {
                "plate_id": plate_id,
                "plate_sha256": plate_sha256,
                "pin_key": pin_key,
                "preprocess_tag": preprocess_tag,
                "record_ids": list(record_ids),
                "artifact": artifact.path,
            }
        )

    def note(self, key: str, value: Any) -> None:
        """Record a run-level fact (timings, counts) in the manifest header."""
        self.header[key] = value

    def add_failure(self, *, plate_id: str, pin_key: str, reason: str) -> None:
        self.failures.append({"plate_id": plate_id, "pin_key": pin_key, "reason": reason})

    def seal(self) -> Manifest:
        if self.sealed:
            raise StoreError(f"run {self.run_id} is already sealed")
        payload = {
            **self.header,
            "manifest_version": MANIFEST_VERSION,
            "status": "sealed",
            "sealed_at": utc_now(),
            "instruments": self.instruments,
            "plates": list(self.plates.values()),
            "outputs": [vars(a) for a in self.outputs],
            "pairs": self.pairs,
            "failures": self.failures,
        }
        for artifact in self.outputs:
            _make_read_only(self.run_dir / artifact.path)
        manifest_path = self.run_dir / MANIFEST_NAME
        write_json_atomic(manifest_path, payload)
        _make_read_only(manifest_path)
        self.store.log_seal(self.run_id, sha256_file(manifest_path), payload["sealed_at"])
        self.store.index.update()  # a failure here is logged; the next lookup indexes the run
        self.sealed = True
        return Manifest(self.run_dir, payload)


class RunStore:
    """Sealed runs under ``<root>/runs``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.seal_log_path = self.root / SEAL_LOG_NAME
        # Record id and (pin, plate) lookups: an index of the manifests, never their substitute.
        self.index = StoreIndex(self.root, self.runs_dir, self.manifests)

    def open_run(
        self,
        *,
        kind: str,
        dagster_run_id: str | None = None,
        code_version: str | None = None,
        device: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> OpenRun:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{kind}-{uuid.uuid4().hex[:8]}"
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        header = {
            "run_id": run_id,
            "kind": kind,
            "dagster_run_id": dagster_run_id,
            "code_version": code_version,
            "started_at": utc_now(),
            "host": platform.node(),
            "device": device,
            "libraries": library_versions(),
            "config": config or {},
        }
        return OpenRun(self, run_id, run_dir, header)

    def run_dirs(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.iterdir() if p.is_dir())

    def manifests(self) -> Iterator[Manifest]:
        """Readable sealed runs, oldest first; unsealed directories are skipped, and so are
        damaged manifests, each with a warning naming it (:meth:`damaged_manifests` lists them)."""
        for run_dir in self.run_dirs():
            if not (run_dir / MANIFEST_NAME).is_file():
                continue
            try:
                yield read_manifest(run_dir)
            except ManifestError as exc:
                warn_damaged(exc)

    def damaged_manifests(self) -> list[ManifestError]:
        """Every sealed run whose manifest cannot be read, with what is wrong with it."""
        damaged = []
        for run_dir in self.run_dirs():
            if (run_dir / MANIFEST_NAME).is_file():
                try:
                    read_manifest(run_dir)
                except ManifestError as exc:
                    damaged.append(exc)
        return damaged

    def run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>``; a run id that is a path, or leads out of the store, is refused."""
        run_dir = self.runs_dir / run_id
        if not _RUN_ID.fullmatch(run_id) or not run_dir.resolve().is_relative_to(self.runs_dir.resolve()):
            raise StoreError(f"{run_id!r} is not a run id (a name listed by `awb runs`, not a path)")
        return run_dir

    def manifest(self, run_id: str) -> Manifest:
        run_dir = self.run_dir(run_id)
        if not (run_dir / MANIFEST_NAME).is_file():
            state = "is not sealed (interrupted or still running)" if run_dir.is_dir() else "does not exist"
            raise StoreError(f"run {run_id} {state} under {self.runs_dir}")
        return read_manifest(run_dir)

    def seal_log(self) -> SealLog:
        return read_seal_log(self.seal_log_path)

    def log_seal(self, run_id: str, manifest_sha256: str, sealed_at: str) -> SealEntry:
        """Append a sealed manifest's sha256 to the seal log (at sealing, or to adopt an unlogged run)."""
        return append_seal(self.seal_log_path, run_id=run_id, manifest_sha256=manifest_sha256, sealed_at=sealed_at)

    def unsealed_runs(self) -> list[Path]:
        return [d for d in self.run_dirs() if not (d / MANIFEST_NAME).is_file()]

    def sealed_pairs(
        self, pin_key: str, plate_ids: Collection[str] | None = None
    ) -> dict[tuple[str, str, str], SealedPair]:
        """Latest sealed pair per (plate_id, plate_sha256, preprocess_tag) for one pin; only
        those of ``plate_ids`` when given (a step's plates). Found through the store's index,
        read from the manifests it names (:mod:`awb_dagster.provenance.store_index`)."""
        return self.index.sealed_pairs(pin_key, plate_ids)

    def find_record(self, record_id: str) -> tuple[Manifest, SealedPair]:
        found = self.index.find_record(record_id)
        if found is None:
            raise StoreError(
                f"record {record_id} is in no sealed run under {self.runs_dir} "
                "(check the id, or the --home the run was made with)"
            )
        return found


def verified_path(store: RunStore, run_id: str, artifact: str, sha256: str) -> str:
    """The artifact's path, once its bytes match the sha256 of its sealed manifest."""
    path = store.runs_dir / run_id / artifact
    actual = sha256_file(path)
    if actual != sha256:
        raise StoreError(
            f"{path}: sha256 {actual} does not match {sha256} in the manifest of run {run_id}; the "
            "sealed artifact was modified. Re-materialize the asset that wrote it (embeddings: with force=True)."
        )
    return str(path)
