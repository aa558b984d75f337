"""`awb demo`'s terminal: the demo's own lines on stdout, everything else in a log file.

Libraries write to stderr: transformers' shard progress bars and config warnings while the tiny
checkpoints are built, Dagster's INFO lines for every step of every run. Without ``--verbose``
the demo points file descriptor 2 itself (so also C libraries and subprocesses, not only Python's
``sys.stderr``) at ``<home>/logs/demo-<UTC stamp>.log`` for its duration, and says so once.
On a terminal, the step at work is shown on one line (:class:`StepLine`), rewritten in place.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

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


class StepLine:
    """The demo's progress: one line, rewritten in place, naming the step at work. Only on a
    terminal; piped output gets the demo's result lines alone. :meth:`clear` before printing."""

    def __init__(self, stream: TextIO = sys.stdout):
        self._stream = stream
        self._shown = False
        self._enabled = stream.isatty()

    def show(self, text: str) -> None:
        if not self._enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = text if len(text) <= width else text[: max(0, width - 1)] + "…"
        self._stream.write(f"\r\033[K{line}")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._shown = False
