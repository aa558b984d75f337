"""A loopback Hugging Face Hub: serves model repos from a local folder over HTTP on 127.0.0.1.

It answers the endpoints that ``huggingface_hub`` (and through it ``transformers.from_pretrained``)
calls, with the same headers and error codes as the real hub, so the real loading code runs
unchanged against it:

- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``sha``, ``pipeline_tag``,
  ``library_name``, ``tags``, ``cardData``, ``siblings``, ``gated``...).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` and ``POST /api/models/{repo}/paths-info/{rev}``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` (and ``/raw/``) with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, ``Content-Length`` and byte ``Range``s.
- ``GET``/``HEAD /files/{name}``: a plain file published with :meth:`LoopbackHub.add_file`, as a
  release server serves weights outside the hub (the original segment-anything checkpoints).
- Errors as ``X-Error-Code`` headers: ``RepoNotFound`` and ``RevisionNotFound`` (404),
  ``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with a token not in
  ``allowed_tokens``). As on the real hub, model info of a gated repo is public; its files and
  listings are not.

Repos are persisted under ``root`` (``repos/<owner>/<name>/repo.json`` plus content-addressed
``blobs/``), so another process can serve the same repos again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from awb_dagster.registry.hub_settings import reset_transformers_hf_api, set_hub_endpoint

Gated = Literal[False, "auto", "manual"]

DEMO_TOKEN = "hf_awb_loopback_demo_token"
"""The token a fresh ``LoopbackHub`` accepts for gated repos."""

DEFAULT_BRANCH = "main"

# Extensions the real hub stores through LFS (their HEAD carries X-Linked-Etag = sha256).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".npz")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LFS_POINTER_SIZE = 134


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
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": _LFS_POINTER_SIZE}
        return entry


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


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


class LoopbackHub:
    """Model repos under ``root``, served over HTTP by :meth:`start` until :meth:`stop`."""

    def __init__(self, root: Path, *, allowed_tokens: Iterable[str] = (DEMO_TOKEN,)) -> None:
        self.root = Path(root)
        self.allowed_tokens: set[str] = set(allowed_tokens)
        self.request_log: list[tuple[str, str]] = []
        self.endpoint: str | None = None
        self._write_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repository storage -------------------------------------------------------------

    def _repo_file(self, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_REPO_PART.fullmatch(part) for part in parts):
            raise ValueError(f"repo id must be 'owner/name', got {repo_id!r}")
        return self.root / "repos" / parts[0] / parts[1] / "repo.json"

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _read_repo(self, repo_id: str) -> dict[str, Any] | None:
        try:
            path = self._repo_file(repo_id)
        except ValueError:
            return None
        return json.loads(path.read_text()) if path.is_file() else None

    def repo_ids(self) -> list[str]:
        """Every repo stored under ``root``."""
        return sorted(
            f"{path.parent.parent.name}/{path.parent.name}" for path in self.root.glob("repos/*/*/repo.json")
        )

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        """The commit sha ``branch`` of ``repo_id`` points at."""
        repo = self._read_repo(repo_id)
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
            name: StoredFile(name, hashlib.sha256(data).hexdigest(), len(data), _git_blob_oid(data))
            for name, data in sorted(contents.items())
        }
        repo_path = self._repo_file(repo_id)
        with self._write_lock:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            repo = self._read_repo(repo_id) or {"id": repo_id, "created_at": now, "refs": {}, "commits": {}}
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

    # -- request handling ------------------------------------------------------------------

    def _repo(self, repo_id: str) -> dict[str, Any]:
        repo = self._read_repo(repo_id)
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

    @staticmethod
    def _files(commit: dict[str, Any]) -> dict[str, StoredFile]:
        return {name: StoredFile(name, *entry) for name, entry in commit["files"].items()}

    def model_info(self, repo_id: str, revision: str, *, blobs: bool) -> dict[str, Any]:
        """The JSON body of ``/api/models/{repo_id}/revision/{revision}`` (public even when gated)."""
        repo = self._repo(repo_id)
        sha, commit = self._commit(repo, revision)
        files = self._files(commit)
        config: dict[str, Any] = {}
        if "config.json" in files:
            full_config = json.loads(self._blob_path(files["config.json"].sha256).read_bytes())
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
                        "size": stored.size, "sha256": stored.sha256, "pointerSize": _LFS_POINTER_SIZE
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
        files = [f for name, f in self._files(commit).items() if name.startswith(prefix)]
        if prefix and not files:
            raise HubError(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist on {revision}")
        entries: dict[str, dict[str, Any]] = {}
        for stored in files:
            parts = stored.path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                folder_entry = {"type": "directory", "oid": _git_blob_oid(folder.encode()), "path": folder}
                entries.setdefault(folder, folder_entry)
            if recursive or len(parts) == 1:
                entries[stored.path] = stored.tree_entry()
        return [entries[key] for key in sorted(entries)]

    def paths_info(
        self, repo_id: str, revision: str, paths: list[str], authorization: str | None
    ) -> list[dict[str, Any]]:
        """Entries for the requested ``paths`` that exist at ``revision`` (unknown paths are skipped)."""
        _, _, commit = self._readable_commit(repo_id, revision, authorization)
        files = self._files(commit)
        found = []
        for path in paths:
            if path in files:
                found.append(files[path].tree_entry())
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                found.append({"type": "directory", "oid": _git_blob_oid(path.encode()), "path": path})
        return found

    def file(
        self, repo_id: str, revision: str, path: str, authorization: str | None
    ) -> tuple[str, StoredFile]:
        """The commit sha and stored file served at ``/{repo_id}/resolve/{revision}/{path}``."""
        _, sha, commit = self._readable_commit(repo_id, revision, authorization)
        stored = self._files(commit).get(path)
        if stored is None:
            raise HubError(
                HTTPStatus.NOT_FOUND, "EntryNotFound", "Entry not found", headers={"X-Repo-Commit": sha}
            )
        return sha, stored

    def read_blob(self, stored: StoredFile) -> bytes:
        return self._blob_path(stored.sha256).read_bytes()

    # -- plain files outside the hub ---------------------------------------------------------

    def add_file(self, name: str, content: bytes) -> str:
        """Serve ``content`` at ``/files/{name}`` (replacing any earlier file of that name); return its sha256."""
        if not _REPO_PART.fullmatch(name):
            raise ValueError(f"file name must match {_REPO_PART.pattern}, got {name!r}")
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content)
        return hashlib.sha256(content).hexdigest()

    def plain_file(self, name: str) -> bytes:
        path = self.root / "files" / name
        if not _REPO_PART.fullmatch(name) or not path.is_file():
            raise HubError(HTTPStatus.NOT_FOUND, None, f"no file {name!r}")
        return path.read_bytes()

    # -- server lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        """Serve on a random port of 127.0.0.1; return the endpoint URL (idempotent)."""
        if self._server is not None:
            assert self.endpoint is not None
            return self.endpoint
        handler = type("BoundHubRequestHandler", (_HubRequestHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
        self.endpoint = None

    def __enter__(self) -> LoopbackHub:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_API_ROUTE = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<kind>revision|tree|paths-info)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
_FILE_ROUTE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)$")
_PLAIN_FILE_ROUTE = re.compile(r"^/files/(?P<name>[^/]+)$")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the bound :class:`LoopbackHub`."""

    protocol_version = "HTTP/1.1"
    hub: LoopbackHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Requests are recorded in ``hub.request_log``, not printed."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.request_log.append((method, url.path))
        query = parse_qs(url.query)
        try:
            if (match := _API_ROUTE.match(url.path)) is not None:
                self._api(method, match, query)
            elif method in ("GET", "HEAD") and (match := _FILE_ROUTE.match(url.path)) is not None:
                self._file(method, unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]))
            elif method in ("GET", "HEAD") and (match := _PLAIN_FILE_ROUTE.match(url.path)) is not None:
                content = self.hub.plain_file(unquote(match["name"]))
                self._send(method, HTTPStatus.OK, content, {"Content-Type": "application/octet-stream"})
            else:
                raise HubError(HTTPStatus.NOT_FOUND, None, f"no route for {method} {url.path}")
        except HubError as error:
            headers = {**error.headers, "X-Error-Message": error.message}
            if error.code is not None:
                headers["X-Error-Code"] = error.code
            self._send(method, error.status, json.dumps({"error": error.message}).encode(), headers)

    def _api(self, method: str, match: re.Match[str], query: dict[str, list[str]]) -> None:
        repo_id, kind = unquote(match["repo"]), match["kind"]
        revision = unquote(match["rev"]) if match["rev"] else DEFAULT_BRANCH
        path = unquote(match["path"] or "")
        authorization = self.headers.get("Authorization")
        if method == "GET" and kind in (None, "revision") and not path:
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            body: Any = self.hub.model_info(repo_id, revision, blobs=blobs)
        elif method == "GET" and kind == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            body = self.hub.tree(repo_id, revision, path, recursive=recursive, authorization=authorization)
        elif method == "POST" and kind == "paths-info" and not path:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            body = self.hub.paths_info(repo_id, revision, form.get("paths", []), authorization)
        else:
            raise HubError(HTTPStatus.NOT_FOUND, None, f"no route for {method} {self.path}")
        self._send(method, HTTPStatus.OK, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _file(self, method: str, repo_id: str, revision: str, path: str) -> None:
        sha, stored = self.hub.file(repo_id, revision, path, self.headers.get("Authorization"))
        etag = stored.sha256 if stored.is_lfs else stored.git_oid
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if stored.is_lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        if method == "HEAD":
            self._send(method, HTTPStatus.OK, b"", headers, content_length=stored.size)
            return
        content = self.hub.read_blob(stored)
        status = HTTPStatus.OK
        if (requested := _RANGE.fullmatch(self.headers.get("Range", "").strip())) is not None:
            start = int(requested[1] or 0)
            end = min(int(requested[2]), stored.size - 1) if requested[2] else stored.size - 1
            if start >= stored.size or start > end:
                raise HubError(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, None, "Range not satisfiable",
                    headers={"Content-Range": f"bytes */{stored.size}"},
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{stored.size}"
            content, status = content[start : end + 1], HTTPStatus.PARTIAL_CONTENT
        self._send(method, status, content, headers)

    def _send(
        self,
        method: str,
        status: HTTPStatus,
        body: bytes,
        headers: Mapping[str, str],
        *,
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


@contextmanager
def use_hub_endpoint(endpoint: str) -> Iterator[str]:
    """Point ``huggingface_hub`` and ``transformers`` of this process at ``endpoint``, then restore."""
    from huggingface_hub import constants

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_URL_HOSTS)
    set_hub_endpoint(endpoint)
    try:
        yield endpoint.rstrip("/")
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_URL_HOSTS = saved
        reset_transformers_hf_api()
