"""`awb demo`'s terminal: the demo's own lines on stdout, everything else in a log file.

Libraries write to stderr: transformers' shard progress bars and config warnings while the tiny
checkpoints are built, Dagster's INFO lines for every step of every run. Without ``--verbose``
the demo points file descriptor 2 itself (so also C libraries and subprocesses, not only Python's
``sys.stderr``) at ``<home>/logs/demo-<UTC stamp>.log`` for its duration, and says so once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from awb_dagster.paths import HomePaths


def demo_log_path(paths: HomePaths) -> Path:
    return paths.root / "logs" / f"demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.log"


@contextmanager
def stderr_to_log(log_path: Path) -> Iterator[Path]:
    """Send this process's stderr (fd 2) to ``log_path`` (appended) until the block ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield log_path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
