"""Dagster's own commands in the repository root, with no Dagster variable set: `dagster dev`
serves the family assets through GraphQL and, stopped like Ctrl-C, leaves nothing running (its
processes, the home's embedded PostgreSQL server, its temporary DAGSTER_HOME); `dg check defs`
loads the same definitions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from awb_dagster.instance_storage import embedded_server
from awb_dagster.paths import REPO_ROOT

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
FAMILY_ASSETS = {"clip_embeddings", "siglip_embeddings", "dinov2_embeddings"}
ASSETS = "{ assetNodes { assetKey { path } } }"


def _clean_env(home: Path) -> dict[str, str]:
    """What a fresh shell has: no DAGSTER_* variables. AWB_HOME keeps the test's home out of the
    checkout's .awb/ (without it the home is .awb/ in the root)."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "AWB_HOME": str(home)}


def _as_a_terminal_job() -> None:
    """SIGINT as a job started at a terminal has it (the default action). A test run started with
    `&` from a non-interactive shell inherits SIGINT ignored, and so would `dagster dev`, which
    then cannot be stopped like Ctrl-C: that is the shell's rule, not what this test is about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _asset_names(port: int) -> set[str] | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": ASSETS}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            nodes = json.load(response)["data"]["assetNodes"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
        return None
    return {"/".join(node["assetKey"]["path"]) for node in nodes} or None


def test_dagster_dev_in_the_root_serves_the_family_assets_and_stops_clean(tmp_path):
    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    temp_homes_before = set(REPO_ROOT.glob(".tmp_dagster_home_*"))
    with open(log, "w") as out:
        dev = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-p", str(port), "-h", "127.0.0.1"],
            cwd=REPO_ROOT, env=_clean_env(tmp_path / "home"), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_as_a_terminal_job,
        )  # fmt: skip
    group = psutil.Process(dev.pid)
    try:
        deadline, names = time.monotonic() + 240, None
        while time.monotonic() < deadline and dev.poll() is None:
            names = _asset_names(port)
            if names:
                break
            time.sleep(2)
        assert names, f"dagster dev did not serve assets on port {port}:\n{log.read_text()[-4000:]}"
        assert FAMILY_ASSETS <= names, sorted(names)
        started = group.children(recursive=True)
        assert embedded_server(str(tmp_path / "home")).running()
    finally:
        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        try:
            dev.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
            pytest.fail(f"dagster dev did not stop on SIGINT within 90 s:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    # dagster dev returns once it has told its code servers to stop; give them time to exit.
    psutil.wait_procs(started, timeout=30)
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.cmdline()) for p in left]
    server = embedded_server(str(tmp_path / "home"))
    assert not server.running() and server.holders() == {}, output[-4000:]
    assert set(REPO_ROOT.glob(".tmp_dagster_home_*")) == temp_homes_before
    warnings = [line for line in output.splitlines() if "WARNING" in line and ("DAGSTER_HOME" in line or "dagster.yaml" in line)]
    assert not warnings, warnings


def test_dg_check_defs_in_the_root(tmp_path):
    done = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=REPO_ROOT, env=_clean_env(tmp_path / "home"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All definitions loaded successfully" in done.stdout + done.stderr
    assert not embedded_server(str(tmp_path / "home")).running()
