"""The fields every reader of a sealed manifest relies on, checked before it is used: a damaged
or hand-edited manifest is named instead of failing later with a KeyError, and no path it lists
may lead out of its run directory."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any


def _inside(relpath: object) -> bool:
    """A relative path with no ``..``: lexical, since every read of the store checks it."""
    if not isinstance(relpath, str) or not relpath or "\\" in relpath:
        return False
    path = PurePosixPath(relpath)
    return not path.is_absolute() and ".." not in path.parts


_PAIR_FIELDS = ("plate_id", "plate_sha256", "pin_key", "preprocess_tag", "record_ids", "artifact")


def manifest_problem(run_dir: Path, payload: Any) -> str | None:
    """What makes ``payload`` unusable as the manifest of ``run_dir``, or None."""
    if not isinstance(payload, dict):
        return "manifest is not a JSON object"
    if payload.get("run_id") != run_dir.name:
        return f"run_id {payload.get('run_id')!r} is not its directory's name {run_dir.name!r}"
    outputs = payload.get("outputs")
    if not isinstance(outputs, list):
        return "manifest has no `outputs` list"
    for output in outputs:
        if not isinstance(output, dict) or not {"path", "sha256", "bytes"} <= output.keys():
            return f"output {output!r} lacks path, sha256 or bytes"
        if not _inside(output["path"]):
            return f"output path {output['path']!r} leaves the run directory"
    listed = {output["path"] for output in outputs}
    pairs = payload.get("pairs", [])
    if not isinstance(pairs, list):
        return "`pairs` is not a list"
    for pair in pairs:
        if not isinstance(pair, dict) or not set(_PAIR_FIELDS) <= pair.keys():
            return f"pair {pair!r} lacks one of {', '.join(_PAIR_FIELDS)}"
        if pair["artifact"] not in listed:
            return f"pair of plate {pair['plate_id']} names {pair['artifact']!r}, which `outputs` does not list"
    return None
