"""Pins carry their files, and pin capture trusts nothing (issue 10, items 1 and 7).

`awb pin` downloads the pinned revision's files into the home's hub cache and verifies them; a run
then loads from that cache alone (no endpoint, no network). A hub that refuses, fails, hangs,
answers garbage, rewrites the commit or alters a file in transit ends `awb pin` in one line naming
the model and the cause, within a bound, with nothing written anywhere.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import constants

from awb_dagster.cli import main
from awb_dagster.demo import LoopbackHub, build_tiny_repo, use_hub_endpoint
from awb_dagster.demo.checkpoints import DEMO_LICENSE, DEMO_PIPELINE_TAGS
from awb_dagster.instruments.common import hub_kwargs
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.paths import HomePaths
from awb_dagster.registry import PinLock, Registry
from awb_dagster.registry.pin_files import snapshot_dir

MODEL = "awb-demo/tiny-dinov2"
OTHER_COMMIT = "ab" * 20
HUNG_S = 2.0  # the read timeout the hanging-hub case runs under


def _commit(hub: LoopbackHub, files: dict[str, bytes]) -> str:
    return hub.add_commit(
        MODEL, files, license=DEMO_LICENSE, pipeline_tag=DEMO_PIPELINE_TAGS["dinov2"], library_name="transformers"
    )


@pytest.fixture(scope="module")
def private_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackHub, str, str]]:
    """A hub of its own serving the tiny DINOv2 under its demo id: (hub, endpoint, head sha)."""
    hub = LoopbackHub(tmp_path_factory.mktemp("pin-files-hub"))
    sha = _commit(hub, build_tiny_repo("dinov2"))
    try:
        yield hub, hub.start(), sha
    finally:
        hub.stop()


class TamperingProxy:
    """Forwards requests to ``upstream`` and spoils the answers one way (``mode``)."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream, self.mode = urlsplit(upstream), mode
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                proxy.answer(self, "GET")

            def do_HEAD(self) -> None:
                proxy.answer(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        if self.mode == "hang":
            time.sleep(4 * HUNG_S)
            return
        if self.mode == "5xx":
            status, headers, body = 500, {}, b"internal error"
        else:
            upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=10)
            forwarded = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "range")}
            upstream.request(method, handler.path, headers=forwarded)
            reply = upstream.getresponse()
            status, headers, body = reply.status, dict(reply.getheaders()), reply.read()
            upstream.close()
            if self.mode == "json" and handler.path.startswith("/api/models/"):
                body = b"{this is not json"
            elif self.mode == "commit" and "X-Repo-Commit" in headers:
                headers["X-Repo-Commit"] = OTHER_COMMIT
            elif self.mode == "config" and handler.path.endswith("/config.json") and method == "GET":
                body = body.replace(b'"hidden_size": 40', b'"hidden_size": 41')  # same length, still JSON
        headers.pop("Transfer-Encoding", None)
        if method == "GET" or "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))  # a HEAD keeps the upstream's (the file's size)
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _files_under(*roots: Path) -> set[Path]:
    return {path for root in roots if root.exists() for path in root.rglob("*")}


def test_pin_carries_its_files_and_a_run_needs_no_endpoint(private_hub, tmp_path, capsys) -> None:
    hub, endpoint, sha = private_hub
    paths = HomePaths(tmp_path / "home")
    outside = [Path(constants.HF_HUB_CACHE), Path(os.environ["HF_HOME"]), Path.home() / ".cache" / "huggingface"]
    before = _files_under(*outside)

    assert main(["pin", MODEL, "--endpoint", endpoint, "--home", str(paths.root)]) == 0, capsys.readouterr().err
    assert _files_under(*outside) == before, "nothing is written outside the home"
    pin = PinLock.load(paths.lock).active(MODEL)
    assert pin is not None and pin.sha == sha
    assert set(pin.files) >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    folder = snapshot_dir(paths.hf_cache, MODEL, sha)
    for name, digest in pin.files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert not (paths.hf_cache / ".awb-incoming").exists()

    # A run: no endpoint (the library's default points at a closed port), nothing asked of the hub.
    instrument = Registry.load(lock_path=paths.lock).get(MODEL).instrument
    assert hub_kwargs(instrument, pin, cache_dir=paths.hf_cache, local_files_only=False)["local_files_only"]
    served = len(hub.request_log)
    with use_hub_endpoint("http://127.0.0.1:9"):
        embedder = ImageEmbedder(instrument, pin, device="cpu", dtype="float32", cache_dir=paths.hf_cache)
    assert embedder.dim == 40
    assert len(hub.request_log) == served, "the run asked the hub for nothing"

    # Pinning the same sha again downloads nothing and keeps the lock as it is.
    assert main(["pin", MODEL, "--endpoint", endpoint, "--home", str(paths.root)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert not [path for _, path in hub.request_log[served:] if "/resolve/" in path]


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("refused", "cannot be reached"),
        ("5xx", "HTTP 500"),
        ("hang", "cannot be reached"),
        ("json", "answer awb cannot use"),
        ("commit", f"another commit \\({OTHER_COMMIT}"),
        ("config", "config.json was altered in transit"),
        ("bad-port", "not a usable URL"),
        ("bad-url", "not a usable URL"),
    ],
)
def test_a_hostile_or_broken_hub_fails_the_pin_in_one_line_and_writes_nothing(
    private_hub, tmp_path, capsys, monkeypatch, mode: str, cause: str
) -> None:
    _, endpoint, _ = private_hub
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", HUNG_S)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", HUNG_S)
    proxy = None
    if mode == "refused":
        target = "http://127.0.0.1:9"
    elif mode == "bad-port":
        target = "http://127.0.0.1:99999"
    elif mode == "bad-url":
        target = "127.0.0.1:8080"
    else:
        proxy = TamperingProxy(endpoint, mode)
        target = proxy.endpoint
    home = tmp_path / "home"
    started = time.monotonic()
    try:
        status = main(["pin", MODEL, "--endpoint", target, "--home", str(home)])
    finally:
        if proxy is not None:
            proxy.stop()
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {MODEL}"), err
    assert re.search(cause, lines[0]), lines[0]
    assert elapsed < 4 * HUNG_S + 5, f"{mode}: {elapsed:.1f} s"
    assert not home.exists(), f"a failed pin wrote {sorted(_files_under(home))}"


def test_an_invalid_config_json_fails_the_pin_naming_the_file(tmp_path, capsys) -> None:
    with LoopbackHub(tmp_path / "hub") as hub:
        _commit(hub, {"config.json": b'{"hidden_size": 40,', "model.safetensors": b"\0" * 16})
        status = main(["pin", MODEL, "--endpoint", hub.endpoint, "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert f"error: {MODEL}@" in err and "config.json is not valid JSON" in err
    assert not (tmp_path / "home").exists()


def test_pin_status_names_a_bad_endpoint_in_one_line(private_hub, tmp_path, capsys) -> None:
    _, endpoint, _ = private_hub
    home = ["--home", str(tmp_path / "home")]
    assert main(["pin", MODEL, "--endpoint", endpoint, *home]) == 0
    capsys.readouterr()
    assert main(["pin", "--status", "--endpoint", "http://127.0.0.1:99999", *home]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "error: awb-demo/tiny-dinov2: hub endpoint 'http://127.0.0.1:99999' is not a usable URL" in err[0]
