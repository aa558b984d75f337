"""Comparing two embedding spaces of the same nodes: neighbourhood overlap and linear CKA,
plus the cluster bootstrap used to put an interval on a corpus mean."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK_CELLS = 16 << 20  # comparisons per chunk in neighbour_intersections


def neighbour_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|A(v) ∩ B(v)|`` per row of two (N, k) neighbour index arrays (distinct per row)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"neighbour arrays must be (N, k) with the same N, got {a.shape} and {b.shape}")
    counts = np.empty(a.shape[0], dtype=np.int64)
    rows = max(1, _CHUNK_CELLS // max(1, a.shape[1] * b.shape[1]))
    for start in range(0, a.shape[0], rows):
        block_a, block_b = a[start : start + rows], b[start : start + rows]
        counts[start : start + rows] = (block_a[:, :, None] == block_b[:, None, :]).sum(axis=(1, 2))
    return counts


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-node Jaccard index of two kNN graphs' neighbour sets: ``|A∩B| / |A∪B|``."""
    both = neighbour_intersections(a, b)
    return both / (a.shape[1] + b.shape[1] - both)


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-node share of A's k neighbours that are also B's: ``|A∩B| / k``."""
    return neighbour_intersections(a, b) / a.shape[1]


def chance_jaccard(k: int, n: int) -> float:
    """Expected Jaccard of two independent uniform k-subsets of the other ``n - 1`` nodes.

    The intersection is hypergeometric (population n-1, k marked, k drawn); its mean is
    k²/(n-1), so overlap@k at chance is k/(n-1) and Jaccard about k/(2(n-1)).
    """
    others = n - 1
    if not 1 <= k <= others:
        raise ValueError(f"k={k} needs 1 <= k <= N-1 with N={n}")
    total = math.comb(others, k)
    return sum(
        math.comb(k, i) * math.comb(others - k, k - i) / total * i / (2 * k - i)
        for i in range(0, k + 1)
        if k - i <= others - k
    )


def linear_cka(x: np.ndarray, y: np.ndarray, *, block_rows: int = 8192) -> float:
    """Linear CKA of two representations of the same N nodes (Kornblith et al. 2019).

    The feature-space form ``‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` on column-centred X (N, d₁) and
    Y (N, d₂): O(N·d²) time and O(d²) memory, accumulated in float64 over row blocks.
    Invariant to rotations and isotropic scaling of either space.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same nodes in both spaces, got {x.shape[0]} and {y.shape[0]} rows")
    n = x.shape[0]
    sum_x, sum_y = np.zeros(x.shape[1]), np.zeros(y.shape[1])
    gram_xx = np.zeros((x.shape[1], x.shape[1]))
    gram_yy = np.zeros((y.shape[1], y.shape[1]))
    gram_xy = np.zeros((x.shape[1], y.shape[1]))
    for start in range(0, n, block_rows):
        bx = np.asarray(x[start : start + block_rows], dtype=np.float64)
        by = np.asarray(y[start : start + block_rows], dtype=np.float64)
        sum_x += bx.sum(axis=0)
        sum_y += by.sum(axis=0)
        gram_xx += bx.T @ bx
        gram_yy += by.T @ by
        gram_xy += bx.T @ by
    mean_x, mean_y = sum_x / n, sum_y / n
    gram_xx -= n * np.outer(mean_x, mean_x)
    gram_yy -= n * np.outer(mean_y, mean_y)
    gram_xy -= n * np.outer(mean_x, mean_y)
    denominator = np.linalg.norm(gram_xx) * np.linalg.norm(gram_yy)
    if denominator <= 0:
        raise ValueError("CKA is undefined: one space has zero variance (all vectors equal)")
    return float(np.linalg.norm(gram_xy) ** 2 / denominator)


@dataclass(frozen=True)
class Interval:
    """A corpus mean with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    confidence: float
    samples: int


def bootstrap_mean(
    values: np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval that resamples ``groups``.

    Groups are the resampling unit (plates: a plate's segments stay together); without
    them every value is its own group.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap of an empty set of values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"bootstrap needs at least one sample, got {samples}")
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        sums = np.bincount(codes, weights=values)
        counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, (8 << 20) // sums.size)
    for start in range(0, samples, chunk):
        draw = rng.integers(0, sums.size, size=(min(chunk, samples - start), sums.size))
        means[start : start + draw.shape[0]] = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(values.mean()), float(low), float(high), confidence, samples)
