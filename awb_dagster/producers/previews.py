"""Pictures in the partition metadata: small PNGs inlined as markdown, so the UI shows them."""

from __future__ import annotations

import base64
from pathlib import Path


def inline_png(alt: str, path: Path) -> str:
    """Markdown showing the PNG at ``path`` inline (keep it small: it lives in the event log)."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"
