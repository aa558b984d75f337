"""Re-hash a sealed run's files against its manifest (`awb runs verify`, the checksum check).

A sealed run is append-only: every file its manifest lists must still exist with the listed
sha256 and size, and nothing may have been added beside them. The manifest itself must still
have the sha256 the store's seal log recorded when it was sealed, so a manifest edited
consistently (its hashes kept coherent with edited artifacts, its license changed) is named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.seal_log import SealLog
from awb_dagster.provenance.store import MANIFEST_NAME, Manifest

ProblemKind = Literal["missing", "unreadable", "altered", "unlisted", "manifest altered", "unlogged"]


@dataclass(frozen=True)
class Problem:
    """One file of a sealed run that does not match its manifest."""

    run_id: str
    path: str  # relative to the run directory
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.run_id}/{self.path}: {self.kind} ({self.detail})"


def verify_artifacts(manifest: Manifest, relpaths: Iterable[str]) -> list[Problem]:
    """Re-hash the listed artifacts ``relpaths`` of ``manifest``; one problem per bad file."""
    problems = []
    for relpath in dict.fromkeys(relpaths):
        expected = manifest.artifact(relpath)
        path = manifest.run_dir / relpath
        if not path.is_file():
            problems.append(Problem(manifest.run_id, relpath, "missing", f"expected sha256 {expected['sha256']}"))
            continue
        try:
            actual = sha256_file(path)
        except OSError as exc:
            problems.append(Problem(manifest.run_id, relpath, "unreadable", f"{exc.strerror or exc}"))
            continue
        if actual != expected["sha256"]:
            problems.append(
                Problem(
                    manifest.run_id,
                    relpath,
                    "altered",
                    f"manifest sha256 {expected['sha256']}, file sha256 {actual}, "
                    f"{expected['bytes']} bytes listed, {path.stat().st_size} found",
                )
            )
    return problems


def seal_problem(manifest: Manifest, seal_log: SealLog) -> Problem | None:
    """None when the manifest's bytes are those the seal log recorded at sealing."""
    entry = seal_log.entries.get(manifest.run_id)
    if entry is None:
        return Problem(
            manifest.run_id,
            MANIFEST_NAME,
            "unlogged",
            f"not in {seal_log.path} (sealed before the store had a seal log, or its sealing stopped "
            "before the log line): its manifest cannot be checked; once you trust it, `awb runs verify --adopt`",
        )
    actual = sha256_file(manifest.run_dir / MANIFEST_NAME)
    if actual != entry.manifest_sha256:
        return Problem(
            manifest.run_id,
            MANIFEST_NAME,
            "manifest altered",
            f"seal log line {entry.line} recorded sha256 {entry.manifest_sha256} at sealing ({entry.sealed_at}), "
            f"the manifest now has sha256 {actual}: it was edited after sealing",
        )
    return None


def verify_run(manifest: Manifest, seal_log: SealLog | None = None) -> list[Problem]:
    """Every output of a sealed run re-hashed, plus any file the manifest does not list, plus
    (given the store's ``seal_log``) the manifest against the sha256 recorded at sealing."""
    seal = seal_problem(manifest, seal_log) if seal_log is not None else None
    listed = [output["path"] for output in manifest.payload["outputs"]]
    problems = [seal] if seal else []
    problems += verify_artifacts(manifest, listed)
    known = {*listed, MANIFEST_NAME}
    for path in sorted(manifest.run_dir.rglob("*")):
        relpath = path.relative_to(manifest.run_dir).as_posix()
        if path.is_file() and relpath not in known:
            problems.append(
                Problem(manifest.run_id, relpath, "unlisted", "not in the manifest of a sealed, append-only run")
            )
    return problems

