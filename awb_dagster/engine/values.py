"""Typed metadata values, so Dagster-free producers can say how a value should render.
The asset factory maps them to Dagster's metadata types: ``pathlib.Path`` to a path,
:class:`Markdown` to markdown, :class:`Json` to JSON, :class:`Table` to a table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Markdown:
    text: str


@dataclass(frozen=True)
class Json:
    value: Any


@dataclass(frozen=True)
class Table:
    """Rows of plain values; ``columns`` maps each column name to a Dagster table type name
    (``string``, ``int``, ``float``)."""

    rows: tuple[dict[str, Any], ...]
    columns: dict[str, str]
