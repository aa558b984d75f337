"""The loopback hub's repositories on disk: commits, refs and content-addressed blobs.

Each repo is ``<root>/repos/<owner>/<name>/repo.json`` (refs, commits and the files of each
commit as ``[sha256, size, git oid]``); file contents are ``<root>/blobs/<sha256>``; plain files
published outside the hub are ``<root>/files/<name>``. Every file is written through a temporary
sibling, so another process serving the same root never reads half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Gated = Literal[False, "auto", "manual"]

DEFAULT_BRANCH = "main"

# Extensions the real hub stores through LFS (their HEAD carries X-Linked-Etag = sha256).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".npz")
LFS_POINTER_SIZE = 134
NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""One segment of a repo id, and a plain file's name."""


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit: its content address and the ids the hub reports for it."""

    path: str
    sha256: str
    size: int
    git_oid: str

    @property
    def is_lfs(self) -> bool:
        return self.path.endswith(_LFS_SUFFIXES)

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.is_lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_SIZE}
        return entry


def git_blob_oid(content: bytes) -> str:
    """The id git gives ``content`` as a blob (what the hub reports as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def commit_files(commit: Mapping[str, Any]) -> dict[str, StoredFile]:
    """The files of one commit record of ``repo.json``, by path."""
    return {name: StoredFile(name, *entry) for name, entry in commit["files"].items()}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary sibling, so a reader in another process never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _model_card(
    repo_id: str, license: str | None, pipeline_tag: str | None, library_name: str | None
) -> bytes:
    """A README.md whose YAML front matter is where the real hub reads ``cardData`` from."""
    front = {"library_name": library_name, "license": license, "pipeline_tag": pipeline_tag}
    lines = ["---", *(f"{key}: {value}" for key, value in front.items() if value is not None), "---", ""]
    lines += [f"# {repo_id}", "", "Served by the awb-dagster loopback hub.", ""]
    return "\n".join(lines).encode()


class RepoStore:
    """Model repos and plain files under ``root``; safe to write from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._write_lock = threading.Lock()

    def _repo_file(self, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(NAME_PART.fullmatch(part) for part in parts):
            raise ValueError(f"repo id must be 'owner/name', got {repo_id!r}")
        return self.root / "repos" / parts[0] / parts[1] / "repo.json"

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def read_repo(self, repo_id: str) -> dict[str, Any] | None:
        """The parsed ``repo.json`` of ``repo_id``; None for an unknown or malformed id."""
        try:
            path = self._repo_file(repo_id)
        except ValueError:
            return None
        return json.loads(path.read_text()) if path.is_file() else None

    def read_blob(self, stored: StoredFile) -> bytes:
        return self._blob_path(stored.sha256).read_bytes()

    def repo_ids(self) -> list[str]:
        """Every repo stored under ``root``."""
        return sorted(
            f"{path.parent.parent.name}/{path.parent.name}" for path in self.root.glob("repos/*/*/repo.json")
        )

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        """The commit sha ``branch`` of ``repo_id`` points at."""
        repo = self.read_repo(repo_id)
        if repo is None or branch not in repo["refs"]:
            raise KeyError(f"{repo_id}@{branch} is not on this hub")
        return repo["refs"][branch]

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        license: str | None = None,
        pipeline_tag: str | None = None,
        library_name: str | None = None,
        gated: Gated = False,
    ) -> str:
        """Commit ``files`` (the full tree) on top of ``main`` and move ``main`` to it; return its sha.

        The sha is a digest of the repo id, the parent sha and the files, so the same content
        committed on the same parent always gets the same sha. Without a ``README.md`` in ``files``,
        one is written with the card metadata in its front matter, as on the real hub. ``gated`` is
        the repo's access setting from this commit on. Earlier commits stay servable by sha.
        """
        contents = {
            name: data.read_bytes() if isinstance(data, Path) else bytes(data) for name, data in files.items()
        }
        contents.setdefault("README.md", _model_card(repo_id, license, pipeline_tag, library_name))
        stored = {
            name: StoredFile(name, hashlib.sha256(data).hexdigest(), len(data), git_blob_oid(data))
            for name, data in sorted(contents.items())
        }
        repo_path = self._repo_file(repo_id)
        with self._write_lock:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            repo = self.read_repo(repo_id) or {"id": repo_id, "created_at": now, "refs": {}, "commits": {}}
            parent = repo["refs"].get(DEFAULT_BRANCH)
            digest = json.dumps(
                {"repo": repo_id, "parent": parent, "files": {name: f.sha256 for name, f in stored.items()}},
                sort_keys=True,
            )
            sha = hashlib.sha1(digest.encode()).hexdigest()
            for name, data in contents.items():
                blob = self._blob_path(stored[name].sha256)
                if not blob.exists():
                    blob.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomically(blob, data)
            repo["commits"][sha] = {
                "parent": parent,
                "date": now,
                "license": license,
                "pipeline_tag": pipeline_tag,
                "library_name": library_name,
                "files": {name: [f.sha256, f.size, f.git_oid] for name, f in stored.items()},
            }
            repo["refs"][DEFAULT_BRANCH] = sha
            repo["gated"] = gated
            repo_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(repo_path, json.dumps(repo, indent=1, sort_keys=True).encode())
        return sha

    def add_file(self, name: str, content: bytes) -> str:
        """Serve ``content`` at ``/files/{name}`` (replacing any earlier file of that name); return its sha256."""
        if not NAME_PART.fullmatch(name):
            raise ValueError(f"file name must match {NAME_PART.pattern}, got {name!r}")
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content)
        return hashlib.sha256(content).hexdigest()

    def plain_file_path(self, name: str) -> Path | None:
        """Where the plain file ``name`` is kept; None when there is no such file."""
        path = self.root / "files" / name
        return path if NAME_PART.fullmatch(name) and path.is_file() else None
