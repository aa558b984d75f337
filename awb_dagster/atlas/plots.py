"""PNG plots of the atlas, the disagreement and the topology report (matplotlib, no pyplot
state: every figure is a standalone ``Figure``), plus plate thumbnails for the map."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from awb_dagster.atlas.drift import PinDrift
from awb_dagster.atlas.topology import CHANGES, TopologyStep
from awb_dagster.plates.imaging import PlateError, load_rgb

_CHANGES_COLOR, _STOP_COLOR, _POINT_COLOR = "#1f6f8b", "#c8553d", "#30475e"


def _png(figure: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows ``png`` inline (Dagster's UI renders data URIs in md metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def plate_thumbnails(
    plates: Mapping[str, tuple[Path, str]], *, side: int, max_pixels: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Thumbnails (longest side ``side``) of ``plates`` (id -> (path, sha256)), decoded
    under the color policy with reduced-size JPEG decoding. Returns thumbnails and, per
    plate that could not be drawn, the reason (the map shows a point for it)."""
    thumbnails: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    for plate_id, (path, sha256) in plates.items():
        try:
            image = load_rgb(path, max_pixels=max_pixels, expected_sha256=sha256, draft_min_side=side)
        except PlateError as exc:
            failures[plate_id] = exc.reason
            continue
        image.thumbnail((side, side))
        thumbnails[plate_id] = np.asarray(image)
    return thumbnails, failures


def map_png(
    coords: np.ndarray,
    labels: Sequence[str],
    *,
    title: str,
    subtitle: str,
    thumbnails: Mapping[str, np.ndarray] | None = None,
    show_labels: bool = True,
    dpi: int = 110,
) -> bytes:
    """The 2-D map: a point per node, its thumbnail when given, its label when asked."""
    figure = Figure(figsize=(9, 8))
    ax = figure.subplots()
    x, y = coords[:, 0], coords[:, 1]
    ax.scatter(x, y, s=10, color=_POINT_COLOR, alpha=0.6, zorder=1)
    span = max(float(np.ptp(x)), float(np.ptp(y)), 1e-6)
    size = span * min(0.15, max(0.03, 0.9 / math.sqrt(len(labels))))
    for (px, py), label in zip(coords, labels):
        thumb = (thumbnails or {}).get(label)
        if thumb is not None:
            height, width = thumb.shape[:2]
            w, h = size * width / max(width, height), size * height / max(width, height)
            ax.imshow(thumb, extent=(px - w / 2, px + w / 2, py - h / 2, py + h / 2), zorder=2)
        if show_labels:
            ax.annotate(label, (px, py), xytext=(4, 4), textcoords="offset points", fontsize=7, zorder=3)
    margin = size
    ax.set_xlim(x.min() - margin, x.max() + margin)
    ax.set_ylim(y.min() - margin, y.max() + margin)
    ax.set_aspect("auto")
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    ax.set_xlabel("axis 1")
    ax.set_ylabel("axis 2")
    return _png(figure, dpi)


@dataclass(frozen=True)
class HistogramPanel:
    title: str
    values: np.ndarray
    chance: float
    k: int


def overlap_histograms_png(panels: Sequence[HistogramPanel], *, dpi: int = 110) -> bytes:
    """Per-node Jaccard of kNN sets, one panel per pin pair, with the mean and chance level."""
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        k = panel.k
        edges = np.array([i / (2 * k - i) for i in range(k + 1)])  # the values Jaccard can take
        bins = np.concatenate([[-0.01], (edges[:-1] + edges[1:]) / 2, [1.01]])
        ax.hist(panel.values, bins=bins, color=_CHANGES_COLOR, alpha=0.85)
        ax.axvline(float(np.mean(panel.values)), color="black", linestyle="-", label=f"mean {np.mean(panel.values):.3f}")
        ax.axvline(panel.chance, color=_STOP_COLOR, linestyle="--", label=f"chance {panel.chance:.3f}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xlabel(f"Jaccard of {k}-NN sets")
        ax.set_ylabel("nodes")
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.tight_layout()
    return _png(figure, dpi)


def pair_matrix_png(labels: Sequence[str], jaccard: np.ndarray, cka: np.ndarray, *, dpi: int = 110) -> bytes:
    """Two pins × pins heatmaps: mean kNN Jaccard and linear CKA (diagonal 1)."""
    size = max(4.0, 0.9 * len(labels) + 2)
    figure = Figure(figsize=(2 * size, size))
    for ax, matrix, name in zip(figure.subplots(1, 2), (jaccard, cka), ("mean kNN Jaccard", "linear CKA")):
        ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
        ax.set_title(name, fontsize=10)
    figure.tight_layout()
    return _png(figure, dpi)


def topology_png(steps: Sequence[TopologyStep], *, threshold: float, title: str, dpi: int = 110) -> bytes:
    """Mean change per added pin with its bootstrap interval, the threshold, and the verdicts
    (grey: the first pin, which builds the graph; blue: changes the atlas; red: below threshold)."""
    figure = Figure(figsize=(max(5.0, 1.4 * len(steps) + 2), 4.2))
    ax = figure.subplots()
    positions = np.arange(len(steps))
    means = np.array([s.change.mean for s in steps])
    errors = np.array([[s.change.mean - s.change.low for s in steps], [s.change.high - s.change.mean for s in steps]])
    colors = ["#9aa5b1"] + [_CHANGES_COLOR if s.verdict == CHANGES else _STOP_COLOR for s in steps[1:]]
    ax.bar(positions, means, color=colors, alpha=0.85)
    ax.errorbar(positions, means, yerr=errors, fmt="none", ecolor="black", capsize=4)
    ax.axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xticks(positions, [f"{s.position}. {s.pin_key}" for s in steps], rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean change of the consensus graph")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure, dpi)


def drift_png(drifts: list[PinDrift], *, dpi: int = 110) -> bytes:
    """Per pin pair: the per-plate cosines, sorted, lowest (the plates that moved most) first."""
    figure = Figure(figsize=(6.4, 2.2 + 1.6 * len(drifts)))
    axes = np.atleast_1d(figure.subplots(len(drifts), 1, squeeze=False)).ravel()
    for ax, drift in zip(axes, drifts):
        order = np.argsort(drift.cosines, kind="stable")
        ax.bar(range(len(order)), drift.cosines[order], color=_CHANGES_COLOR, width=1.0)
        mean = float(drift.cosines.mean())
        ax.axhline(mean, color=_STOP_COLOR, linestyle="--", label=f"mean {mean:.4f}")
        low = min(float(drift.cosines.min()), 0.9)
        ax.set_ylim(low - 0.02 * (1 - low), 1.0 + 0.02 * (1 - low))
        ax.set_title(f"{drift.model_id}: {drift.label}", fontsize=8)
        ax.set_xlabel("plates, sorted by cosine")
        ax.set_ylabel("cosine between pins")
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return _png(figure, dpi)
