"""Probes as measured axes of the atlas (seed 7): per probe axis, its Spearman rank correlation with
each plate-scope map's principal axes and with the CLIP-vs-DINOv2 disagreement per plate, and the
plates at each extreme.

Pure code over plain mappings (plate id -> value). A probe pin gives one axis per scalar (``score``)
or one per label of a classifier (``p(<label>)``, its softmax probability). Memory: one float per
plate per axis and reference; time: one rank sort per (axis, reference) pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

Values = Mapping[str, float]  # plate id -> value


@dataclass(frozen=True)
class AxisCorrelation:
    probe_pin: str
    axis: str
    reference: str  # "PC1 <pin>", "PC2 <pin>" or "disagreement <clip pin> vs <dinov2 pin>"
    rho: float  # NaN when either side is constant over the shared plates
    plates: int  # plates both sides have

    def row(self) -> dict[str, object]:
        return {"probe_pin": self.probe_pin, "axis": self.axis, "reference": self.reference,
                "spearman_rho": None if np.isnan(self.rho) else round(self.rho, 4), "plates": self.plates}  # fmt: skip


def probe_axes(records: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Axis -> (plate id -> value) from probe records (rows of a score or probe artifact)."""
    axes: dict[str, dict[str, float]] = {}
    for record in records:
        plate = str(record["plate_id"])
        if record.get("score") is not None:
            axes.setdefault("score", {})[plate] = float(record["score"])  # type: ignore[arg-type]
        for label, p in zip(record.get("labels") or (), record.get("probabilities") or ()):
            axes.setdefault(f"p({label})", {})[plate] = float(p)
    return axes


def neighbour_disagreement(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Per plate both graphs hold: 1 - Jaccard of its kNN neighbour sets in graph ``a`` and ``b``."""
    out = {}
    for plate in sorted(a.keys() & b.keys()):
        first, second = set(a[plate]), set(b[plate])
        out[plate] = 1.0 - len(first & second) / max(1, len(first | second))
    return out


def correlate(probe_pin: str, axes: Mapping[str, Values], references: Mapping[str, Values]) -> list[AxisCorrelation]:
    """Spearman rho of every axis with every reference over the plates both have (at least 3)."""
    found = []
    for axis, values in sorted(axes.items()):
        for reference, other in references.items():
            plates = sorted(values.keys() & other.keys())
            if len(plates) < 3:
                continue
            x = np.array([values[p] for p in plates])
            y = np.array([other[p] for p in plates])
            constant = np.ptp(x) == 0 or np.ptp(y) == 0
            rho = float("nan") if constant else float(spearmanr(x, y).statistic)
            found.append(AxisCorrelation(probe_pin, axis, reference, rho, len(plates)))
    return found


def extremes(values: Values, count: int) -> tuple[list[str], list[str]]:
    """The ``count`` plates with the lowest and the highest values (ties by plate id)."""
    ordered = sorted(values, key=lambda plate: (values[plate], plate))
    count = min(count, len(ordered) // 2 or len(ordered))
    return ordered[:count], ordered[::-1][:count]


def colored_map_png(coords: np.ndarray, values: np.ndarray, *, title: str, axis: str, dpi: int = 110) -> bytes:
    """An atlas map (one point per plate at its map position) colored by a probe axis, with a colorbar."""
    import io

    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 6))
    ax = figure.subplots()
    points = ax.scatter(coords[:, 0], coords[:, 1], c=values, cmap="viridis", s=28, edgecolors="none")
    figure.colorbar(points, ax=ax, label=axis)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("axis 1 (PC1)")
    ax.set_ylabel("axis 2 (PC2)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
