"""`awb ui`'s process: ``dagster dev`` in its own process group, stopped with everything it started.

Why: a process started in the background (``awb ui &``, nohup, a non-interactive shell) inherits
SIGINT *ignored*, and ``dagster dev`` maps SIGTERM to its SIGINT handler, so it ignored both and
its webserver, daemon, code servers and run workers outlived any attempt to stop it. Here
``awb`` handles both signals itself, which also hands the child SIGINT's default back (``exec``
resets handled signals, not ignored ones); on either it asks ``dagster dev`` to stop with SIGINT
(it then shuts its webserver and daemon down through their shutdown pipes), waits, and finally
signals the whole process group, SIGTERM then SIGKILL, so nothing it started survives it. A
second signal skips the wait. The embedded PostgreSQL server is not in the group (``pg_ctl``
starts it in its own session): it stops when its last holder lets go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

GRACE_S = 75.0  # dagster dev waits up to 60 s for each of its webserver and daemon
SWEEP_S = 10.0
_POLL_S = 0.2


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while being read
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat_file.parent.name))
    return members


def _wait_until(condition, seconds: float, stop_early=lambda: False) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop_early():
        if condition():
            return True
        time.sleep(_POLL_S)
    return condition()


def _sweep(child: subprocess.Popen, say) -> None:
    """SIGTERM, then SIGKILL, to whatever of the child's group is still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = group_members(child.pid)
        if not left:
            return
        say(f"sending {sig.name} to {len(left)} process(es) dagster dev left running: {left}")
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        _wait_until(lambda: child.poll() is not None and not group_members(child.pid), SWEEP_S)


def run_in_own_group(
    command: Sequence[str], *, env: Mapping[str, str], cwd: Path | str, grace_s: float = GRACE_S
) -> int:
    """Run ``command`` as the leader of a new process group until it exits or this process gets
    SIGINT or SIGTERM; then stop it and every process of its group. Returns its exit status."""
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)

    def say(message: str) -> None:
        print(f"awb ui: {message}", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(list(command), env=dict(env), cwd=cwd, start_new_session=True)
        try:
            _wait_until(lambda: child.poll() is not None, float("inf"), stop_early=lambda: bool(received))
            if child.poll() is None:
                say(f"{signal.Signals(received[0]).name} received; stopping dagster dev (pid {child.pid})")
                child.send_signal(signal.SIGINT)
                _wait_until(lambda: child.poll() is not None, grace_s, stop_early=lambda: len(received) > 1)
        finally:
            _sweep(child, say)
            child.wait()
        return child.returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
