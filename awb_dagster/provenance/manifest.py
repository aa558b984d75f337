"""A sealed run's manifest as every reader of the store sees it (DESIGN.md section 5): read and
checked (:func:`read_manifest`), its (plate, pin) pairs (:class:`SealedPair`), and the one
warning per process that names a damaged manifest being skipped. Split from
:mod:`awb_dagster.provenance.store` so that the store's index
(:mod:`awb_dagster.provenance.store_index`) reads manifests the same way the store does."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awb_dagster.provenance.manifest_fields import manifest_problem

MANIFEST_NAME = "run.manifest.json"

_LOG = logging.getLogger("awb_dagster.provenance.store")  # the logger these warnings always had
_WARNED: set[Path] = set()  # damaged manifests already named in this process


class StoreError(Exception):
    """A run store problem: names the run and the file."""


class ManifestError(StoreError):
    """A sealed run's manifest that cannot be read: names the file and what is wrong."""

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"{path}: {problem}; this run is skipped (every other run stays usable). Restore the "
            "manifest from a backup, or move its run directory out of the store."
        )
        self.path = path
        self.problem = problem


def warn_damaged(exc: ManifestError) -> None:
    """Log a damaged manifest being skipped, once per process (every step reads the store per pin)."""
    if exc.path not in _WARNED:
        _WARNED.add(exc.path)
        _LOG.warning("%s", exc)


def read_manifest(run_dir: Path) -> Manifest:
    """The manifest of ``run_dir``, checked for the fields every reader relies on."""
    path = run_dir / MANIFEST_NAME
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(path, f"manifest is not valid JSON ({exc})") from exc
    problem = manifest_problem(run_dir, payload)
    if problem:
        raise ManifestError(path, problem)
    return Manifest(run_dir, payload)


@dataclass(frozen=True, slots=True)  # slots: a 100k-plate pin lookup builds 100k of them
class SealedPair:
    """A (plate, pin) pair whose records are in a sealed run."""

    run_id: str
    dagster_run_id: str | None
    plate_id: str
    plate_sha256: str
    pin_key: str
    preprocess_tag: str
    record_ids: tuple[str, ...]
    artifact: str
    artifact_sha256: str
    artifact_path: Path


class Manifest:
    """A sealed run's manifest, read-only."""

    def __init__(self, run_dir: Path, payload: dict[str, Any]):
        self.run_dir = run_dir
        self.payload = payload
        self._outputs: dict[str, tuple[dict[str, Any], Path]] | None = None  # path -> (output, full path)

    @property
    def run_id(self) -> str:
        return self.payload["run_id"]

    @property
    def pairs(self) -> list[dict[str, Any]]:
        return self.payload.get("pairs", [])

    def _output(self, relpath: str) -> tuple[dict[str, Any], Path]:
        # One pass over the outputs however many pairs name them, and one Path per artifact: a run
        # of thousands of pairs and parts built a list scan and a Path per pair (bench/scale.py).
        if self._outputs is None:
            self._outputs = {}
            for output in self.payload["outputs"]:
                self._outputs.setdefault(output["path"], (output, self.run_dir / output["path"]))
        try:
            return self._outputs[relpath]
        except KeyError:
            raise StoreError(f"run {self.run_id}: {relpath} is not listed in its manifest") from None

    def artifact(self, relpath: str) -> dict[str, Any]:
        return self._output(relpath)[0]

    def sealed_pair(self, pair: dict[str, Any]) -> SealedPair:
        output, path = self._output(pair["artifact"])
        return SealedPair(
            run_id=self.run_id,
            dagster_run_id=self.payload.get("dagster_run_id"),
            plate_id=pair["plate_id"],
            plate_sha256=pair["plate_sha256"],
            pin_key=pair["pin_key"],
            preprocess_tag=pair["preprocess_tag"],
            record_ids=tuple(pair["record_ids"]),
            artifact=pair["artifact"],
            artifact_sha256=output["sha256"],
            artifact_path=path,
        )
