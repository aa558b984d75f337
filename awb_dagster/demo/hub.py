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
``blobs/``, :mod:`awb_dagster.demo.hub_store`), so another process can serve the same repos again.
What each endpoint answers is :mod:`awb_dagster.demo.hub_answers`; the HTTP side is
:mod:`awb_dagster.demo.hub_http`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from awb_dagster.demo.hub_answers import HubAnswers
from awb_dagster.demo.hub_http import make_server
from awb_dagster.registry.hub_settings import reset_transformers_hf_api, set_hub_endpoint

DEMO_TOKEN = "hf_awb_loopback_demo_token"
"""The token a fresh ``LoopbackHub`` accepts for gated repos."""


class LoopbackHub(HubAnswers):
    """Model repos under ``root``, served over HTTP by :meth:`start` until :meth:`stop`.

    ``request_log`` lists the (method, path) of every request served.
    """

    def __init__(self, root: Path, *, allowed_tokens: Iterable[str] = (DEMO_TOKEN,)) -> None:
        super().__init__(root, allowed_tokens=allowed_tokens)
        self.request_log: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve on a random port of 127.0.0.1; return the endpoint URL (idempotent)."""
        if self._server is not None:
            assert self.endpoint is not None
            return self.endpoint
        self._server = make_server(self, self.request_log)
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
