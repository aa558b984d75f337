"""The ensemble's stop rule. The seed: "stop adding models when they stop changing the atlas
topology". Pins are added in a configured order; for each, the change it makes to the
consensus neighbourhood graph is measured per node, averaged over the corpus with a
bootstrap interval over plates, and compared with a threshold.

Verdict per pin: mean change >= threshold is "changes the atlas", below it
"below threshold: stop". The first pin builds the graph from nothing (change 1). The first
``keep`` pins are the minimum ensemble (the seed's: CLIP + DINOv2) and stay whatever their
verdict; the ensemble stops before the first later pin whose verdict is "stop". Pins after
it are still measured so the order can be revisited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from awb_dagster.atlas.compare import Interval, bootstrap_mean, neighbour_intersections

CHANGES = "changes the atlas"
STOP = "below threshold: stop"

METHODS: dict[str, str] = {
    "consensus": (
        "consensus graph: each node's k nearest neighbours by the sum, over the pins added so "
        "far, of cosine similarity z-scored within that node's row (so each instrument has an "
        "equal say); the change a pin makes at a node is the share of its k consensus "
        "neighbours that the pin replaces: 1 - |C_before ∩ C_after| / k"
    ),
    "union": (
        "union graph: each node's neighbours are the union of its kNN sets in every pin added "
        "so far; the change a pin makes at a node is the share of the new union that it adds: "
        "|U_after \\ U_before| / |U_after|. The union only grows, so this change shrinks with "
        "ensemble size even for unrelated pins; prefer consensus for the stop rule"
    ),
}


@dataclass(frozen=True)
class TopologyStep:
    """One pin added to the ensemble and what it did to the consensus graph."""

    position: int  # 1-based place in the order
    pin_key: str
    change: Interval  # mean per-node change with its bootstrap interval
    threshold: float
    verdict: str

    @property
    def uncertain(self) -> bool:
        """Whether the bootstrap interval straddles the threshold (the verdict could flip)."""
        return self.change.low < self.threshold <= self.change.high


def verdict(mean_change: float, threshold: float) -> str:
    """``CHANGES`` when ``mean_change >= threshold``, else ``STOP``."""
    check_threshold(threshold)
    return CHANGES if mean_change >= threshold else STOP


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def consensus_changes(prefix_graphs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-node change made by each pin, from the consensus graph of every prefix."""
    n, k = prefix_graphs[0].shape
    changes = [np.ones(n)]
    for before, after in zip(prefix_graphs, prefix_graphs[1:]):
        changes.append(1.0 - neighbour_intersections(before, after) / k)
    return changes


def union_changes(graphs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-node change made by each pin to the union of the kNN sets of the pins before it."""
    union = graphs[0]
    changes = [np.ones(union.shape[0])]
    for graph in graphs[1:]:
        is_new = ~(graph[:, :, None] == union[:, None, :]).any(axis=2)
        union = np.concatenate([union, np.where(is_new, graph, -1)], axis=1)  # -1 pads repeats
        changes.append(is_new.sum(axis=1) / (union >= 0).sum(axis=1))
    return changes


def evaluate_order(
    pin_keys: Sequence[str],
    changes: Sequence[np.ndarray],
    *,
    threshold: float,
    groups: Sequence[str] | None = None,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[TopologyStep]:
    """A step per pin: corpus mean change with its bootstrap interval over ``groups``, and the verdict."""
    check_threshold(threshold)
    if len(pin_keys) != len(changes):
        raise ValueError(f"{len(pin_keys)} pins but {len(changes)} change arrays")
    steps = []
    for position, (pin_key, per_node) in enumerate(zip(pin_keys, changes), start=1):
        interval = bootstrap_mean(per_node, groups, samples=samples, confidence=confidence, seed=seed)
        steps.append(
            TopologyStep(position, pin_key, interval, threshold, verdict(interval.mean, threshold))
        )
    return steps


def first_stop(steps: Sequence[TopologyStep], keep: int = 1) -> TopologyStep | None:
    """The first pin after the ``keep`` pins of the minimum ensemble whose verdict is
    ``STOP``: the ensemble should end before it."""
    return next((step for step in steps if step.position > keep and step.verdict == STOP), None)
