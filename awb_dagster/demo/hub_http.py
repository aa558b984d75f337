"""The loopback hub's HTTP side: routes each request to :class:`HubAnswers` and writes the answer
with the real hub's headers (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` for
LFS files, byte ``Range``s, errors as ``X-Error-Code``/``X-Error-Message``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from awb_dagster.demo.hub_answers import HubAnswers, HubError
from awb_dagster.demo.hub_store import DEFAULT_BRANCH

_API_ROUTE = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<kind>revision|tree|paths-info)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
_FILE_ROUTE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)$")
_PLAIN_FILE_ROUTE = re.compile(r"^/files/(?P<name>[^/]+)$")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def make_server(hub: HubAnswers, request_log: list[tuple[str, str]]) -> ThreadingHTTPServer:
    """A server on a free port of 127.0.0.1 answering from ``hub``; every request's method and
    path are appended to ``request_log``. Start it with ``serve_forever``."""
    handler = type("BoundHubRequestHandler", (_HubRequestHandler,), {"hub": hub, "request_log": request_log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the bound :class:`HubAnswers`."""

    protocol_version = "HTTP/1.1"
    hub: HubAnswers
    request_log: list[tuple[str, str]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Requests are recorded in ``request_log``, not printed."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.request_log.append((method, url.path))
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
