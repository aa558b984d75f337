"""Which embedder loads an embedding pin: open_clip checkpoints (roster ``library = "open_clip"``)
through :class:`OpenClipEmbedder`, the rest through transformers' :class:`ImageEmbedder`. Both
offer the same plate interface to the producers. No Dagster here."""

from __future__ import annotations

from typing import Any

from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.open_clip_embedding import OPEN_CLIP_LIBRARY, OpenClipEmbedder
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

Embedder = ImageEmbedder | OpenClipEmbedder


def load_embedder(instrument: Instrument, pin: Pin, **options: Any) -> Embedder:
    """The loaded embedder of ``instrument`` at ``pin`` (options: :class:`ImageEmbedder`'s)."""
    if instrument.library == OPEN_CLIP_LIBRARY:
        return OpenClipEmbedder(instrument, pin, **options)
    return ImageEmbedder(instrument, pin, **options)
