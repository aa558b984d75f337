"""What the loopback hub answers, as the real hub does: model info, listings, files, the gate.

Every method returns the body of one endpoint or raises :class:`HubError` with the status and
``X-Error-Code`` the real hub uses. As on the real hub, model info of a gated repo is public; its
files and listings are not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from awb_dagster.demo.hub_store import (
    LFS_POINTER_SIZE,
    RepoStore,
    StoredFile,
    commit_files,
    git_blob_oid,
)

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def _json_object(data: bytes) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ``{}`` for anything else, as the real hub shows a repo
    whose config.json is broken (no config fields in its model info, the file still served)."""
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


class HubError(Exception):
    """An HTTP error the hub answers with, carried as ``X-Error-Code``/``X-Error-Message``."""

    def __init__(
        self, status: HTTPStatus, code: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class HubAnswers(RepoStore):
    """The repos under ``root`` as the hub's endpoints present them; gated repos open to
    ``allowed_tokens``. ``endpoint`` is where the hub is served (named in access errors)."""

    def __init__(self, root: Path, *, allowed_tokens: Iterable[str]) -> None:
        super().__init__(root)
        self.allowed_tokens: set[str] = set(allowed_tokens)
        self.endpoint: str | None = None

    def _repo(self, repo_id: str) -> dict[str, Any]:
        repo = self.read_repo(repo_id)
        if repo is None:
            raise HubError(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found")
        return repo

    @staticmethod
    def _commit(repo: dict[str, Any], revision: str) -> tuple[str, dict[str, Any]]:
        """Return (sha, commit) for a branch name or full commit sha, or raise the hub's 404."""
        sha = repo["refs"].get(revision) or (revision if _COMMIT_SHA.fullmatch(revision) else None)
        if sha is None or sha not in repo["commits"]:
            raise HubError(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, repo["commits"][sha]

    def _readable_commit(
        self, repo_id: str, revision: str, authorization: str | None
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Repo, sha and commit behind a file or listing request, after the gate."""
        repo = self._repo(repo_id)
        self._check_access(repo, authorization)
        sha, commit = self._commit(repo, revision)
        return repo, sha, commit

    def _check_access(self, repo: dict[str, Any], authorization: str | None) -> None:
        if not repo.get("gated"):
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise HubError(
                HTTPStatus.UNAUTHORIZED,
                "GatedRepo",
                f"Access to model {repo['id']} is restricted. You must have access to it and be authenticated to"
                " access it. Please log in.",
            )
        if token not in self.allowed_tokens:
            raise HubError(
                HTTPStatus.FORBIDDEN,
                "GatedRepo",
                f"Access to model {repo['id']} is restricted and you are not in the authorized list. Visit"
                f" {self.endpoint}/{repo['id']} to ask for access.",
            )

    def model_info(self, repo_id: str, revision: str, *, blobs: bool) -> dict[str, Any]:
        """The JSON body of ``/api/models/{repo_id}/revision/{revision}`` (public even when gated)."""
        repo = self._repo(repo_id)
        sha, commit = self._commit(repo, revision)
        files = commit_files(commit)
        config: dict[str, Any] = {}
        if "config.json" in files:
            full_config = _json_object(self.read_blob(files["config.json"]))
            config = {key: full_config[key] for key in ("architectures", "model_type") if key in full_config}
        license = commit["license"]
        tags = [
            commit["library_name"],
            "safetensors" if any(name.endswith(".safetensors") for name in files) else None,
            config.get("model_type"),
            commit["pipeline_tag"],
            f"license:{license}" if license else None,
            "region:us",
        ]
        card = {
            key: commit[key] for key in ("license", "pipeline_tag", "library_name") if commit[key] is not None
        }
        siblings = []
        for stored in files.values():
            sibling: dict[str, Any] = {"rfilename": stored.path}
            if blobs:
                sibling.update(size=stored.size, blobId=stored.git_oid)
                if stored.is_lfs:
                    sibling["lfs"] = {
                        "size": stored.size, "sha256": stored.sha256, "pointerSize": LFS_POINTER_SIZE
                    }
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo["created_at"],
            "private": False,
            "gated": repo.get("gated", False),
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": commit["library_name"],
            "pipeline_tag": commit["pipeline_tag"],
            "tags": [tag for tag in tags if tag],
            "cardData": card,
            "config": config,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(stored.size for stored in files.values()),
        }
        return {key: value for key, value in info.items() if value is not None}

    def tree(
        self, repo_id: str, revision: str, path: str, *, recursive: bool, authorization: str | None
    ) -> list[dict[str, Any]]:
        """Entries of ``path`` at ``revision`` (files and folders), as ``/api/models/.../tree`` lists them."""
        _, _, commit = self._readable_commit(repo_id, revision, authorization)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        files = [f for name, f in commit_files(commit).items() if name.startswith(prefix)]
        if prefix and not files:
            raise HubError(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist on {revision}")
        entries: dict[str, dict[str, Any]] = {}
        for stored in files:
            parts = stored.path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                folder_entry = {"type": "directory", "oid": git_blob_oid(folder.encode()), "path": folder}
                entries.setdefault(folder, folder_entry)
            if recursive or len(parts) == 1:
                entries[stored.path] = stored.tree_entry()
        return [entries[key] for key in sorted(entries)]

    def paths_info(
        self, repo_id: str, revision: str, paths: list[str], authorization: str | None
    ) -> list[dict[str, Any]]:
        """Entries for the requested ``paths`` that exist at ``revision`` (unknown paths are skipped)."""
        _, _, commit = self._readable_commit(repo_id, revision, authorization)
        files = commit_files(commit)
        found = []
        for path in paths:
            if path in files:
                found.append(files[path].tree_entry())
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                found.append({"type": "directory", "oid": git_blob_oid(path.encode()), "path": path})
        return found

    def file(
        self, repo_id: str, revision: str, path: str, authorization: str | None
    ) -> tuple[str, StoredFile]:
        """The commit sha and stored file served at ``/{repo_id}/resolve/{revision}/{path}``."""
        _, sha, commit = self._readable_commit(repo_id, revision, authorization)
        stored = commit_files(commit).get(path)
        if stored is None:
            raise HubError(
                HTTPStatus.NOT_FOUND, "EntryNotFound", "Entry not found", headers={"X-Repo-Commit": sha}
            )
        return sha, stored

    def plain_file(self, name: str) -> bytes:
        """The content served at ``/files/{name}`` (a file published with :meth:`add_file`)."""
        path = self.plain_file_path(name)
        if path is None:
            raise HubError(HTTPStatus.NOT_FOUND, None, f"no file {name!r}")
        return path.read_bytes()
