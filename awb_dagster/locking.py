"""Advisory file locks of a home (``fcntl.flock``), for work two processes must not do at once:
the same (family, pin) in two runs, two scans saving the plate catalog.

The kernel releases a flock when its holder's file descriptor closes, including when the process
is killed (``kill -9``), so a dead holder never wedges the home. Locks are per open file: two
threads of one process that each call :func:`hold_lock` exclude each other too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._@~-]")
_MAX_NAME = 120


def lock_file_name(key: str) -> str:
    """A file name for ``key``: the key itself when it is a safe name, otherwise a readable
    version plus a short hash of the key (two keys never share a lock file)."""
    safe = _UNSAFE.sub("_", key)
    if safe != key or len(safe) > _MAX_NAME or safe.startswith("."):
        safe = f"{safe.lstrip('.')[:_MAX_NAME]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return f"{safe}.lock"


@contextmanager
def hold_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing) for the ``with`` block.
    ``on_wait`` is called once when another holder makes this one wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Read-only is enough for flock: a teammate sharing the home can lock a file it cannot write.
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OSError(f"cannot open the lock file {path} ({exc}); check that the home is writable") from exc
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
