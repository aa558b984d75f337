"""A deterministic 2-D map of an embedding space for people to look at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAP_METHOD = (
    "PCA: the first two principal axes of the column-centred L2 vectors (eigenvectors of the "
    "d×d covariance, float64, numpy.linalg.eigh); each axis's sign is fixed so its largest "
    "loading is positive, so the same vectors always give the same map"
)


@dataclass(frozen=True)
class Map2D:
    coords: np.ndarray  # (N, 2) float32
    explained_variance: tuple[float, float]  # share of the total variance on each axis
    method: str = MAP_METHOD


def pca_map(vectors: np.ndarray, *, block_rows: int = 8192) -> Map2D:
    """Project ``vectors`` (N, d) on their first two principal axes; O(N·d² + d³)."""
    n, dim = vectors.shape
    if n < 2:
        raise ValueError(f"a map needs at least two vectors, got {n}")
    total = np.zeros(dim)
    gram = np.zeros((dim, dim))
    for start in range(0, n, block_rows):
        block = np.asarray(vectors[start : start + block_rows], dtype=np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
    mean = total / n
    covariance = (gram - n * np.outer(mean, mean)) / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    axes = eigenvectors[:, ::-1][:, :2].copy()
    if axes.shape[1] < 2:  # a 1-d space: the second axis is flat
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), range(2)])
    axes *= np.where(signs == 0, 1.0, signs)
    coords = np.empty((n, 2), dtype=np.float32)
    for start in range(0, n, block_rows):
        block = np.asarray(vectors[start : start + block_rows], dtype=np.float64)
        coords[start : start + block_rows] = (block - mean) @ axes
    variance = max(float(eigenvalues.clip(min=0).sum()), 1e-30)
    top = eigenvalues[::-1].clip(min=0)
    explained = (float(top[0] / variance), float(top[1] / variance) if top.size > 1 else 0.0)
    return Map2D(coords, explained)
