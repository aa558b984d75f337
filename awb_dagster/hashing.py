"""The one sha256-of-file helper every layer uses (imports nothing of the project)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO


def sha256_stream(stream: BinaryIO) -> str:
    """Hex sha256 of everything left in the binary ``stream``."""
    return hashlib.file_digest(stream, "sha256").hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)
