"""`awb ui` stops, with everything it started, on SIGINT and on SIGTERM, even when started in
the background, where SIGINT arrives ignored (issue 10, item 9). Starts the real `dagster dev`
on a fresh home; about half a minute per signal on 2 cores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from awb_dagster.ui_process import group_members

pytestmark = pytest.mark.e2e
START_S, STOP_S = 180, 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `awb ui &` inherits from a shell


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_ui_started_in_the_background_stops_with_everything_it_started(tmp_path, stop_signal):
    port = _free_port()
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 (closed below)
    ui = subprocess.Popen(
        [sys.executable, "-m", "awb_dagster.cli", "ui", "--home", str(tmp_path / "home"), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_ignore_sigint,
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + START_S
        while not _serving(port):
            assert ui.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(1)
        started = _descendants(ui.pid)
        # dagster dev, its webserver and daemon, and at least one code server
        assert len(started) >= 4, started
        os.kill(ui.pid, stop_signal)
        assert ui.wait(timeout=STOP_S) == 0, (tmp_path / "ui.log").read_text()[-3000:]
        deadline = time.monotonic() + 10  # orphans reparented to init are reaped there
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if _alive(pid)], (tmp_path / "ui.log").read_text()[-3000:]
        assert not _serving(port)
    finally:  # on failure: awb's session (everything but the home's PostgreSQL server), then that server
        if group_members(ui.pid):
            os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                mine = str(tmp_path / "home").encode() in cmdline.read_bytes()
            except OSError:
                continue
            if mine:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(cmdline.parent.name), signal.SIGTERM)
