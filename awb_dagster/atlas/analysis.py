"""The atlas computations on loaded spaces: per-pin graph tables, pairwise comparison and
the topology changes of an ordered ensemble. Pure functions of numpy arrays and spaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from awb_dagster.atlas.compare import chance_jaccard, jaccard, linear_cka, overlap_at_k
from awb_dagster.atlas.knn import KnnGraph, consensus_prefix_knn, effective_k, knn_cosine
from awb_dagster.atlas.maps import Map2D
from awb_dagster.atlas.spaces import Space
from awb_dagster.atlas.topology import METHODS, consensus_changes, union_changes


def graph_table(space: Space, graph: KnnGraph, atlas_map: Map2D) -> pa.Table:
    """One row per node: identity, map position and its k neighbours (node ids, cosines)."""
    nodes = np.array(space.nodes, dtype=object)
    k = graph.k
    neighbours = pa.FixedSizeListArray.from_arrays(pa.array(nodes[graph.indices].reshape(-1), pa.string()), k)
    similarities = pa.FixedSizeListArray.from_arrays(pa.array(graph.similarities.reshape(-1), pa.float32()), k)
    return pa.table(
        {
            "node": list(space.nodes),
            "record_id": list(space.record_ids),
            "plate_id": list(space.plate_ids),
            "plate_sha256": list(space.plate_sha256s),
            "x": pa.array(atlas_map.coords[:, 0], pa.float32()),
            "y": pa.array(atlas_map.coords[:, 1], pa.float32()),
            "neighbours": neighbours,
            "similarities": similarities,
        }
    )


def graph_from_table(table: pa.Table, space: Space) -> KnnGraph:
    """The kNN graph a :func:`graph_table` holds, as row indices into ``space``."""
    if tuple(table["node"].to_pylist()) != space.nodes:
        raise ValueError(f"{space.pin_key}: the graph table's nodes are not the space's nodes")
    index = {node: i for i, node in enumerate(space.nodes)}
    column = table["neighbours"].combine_chunks()
    k = column.type.list_size
    flat = column.flatten().to_pylist()
    indices = np.array([index[node] for node in flat], dtype=np.int64).reshape(-1, k)
    similarities = table["similarities"].combine_chunks().flatten().to_numpy().reshape(-1, k)
    return KnnGraph(indices, np.asarray(similarities, dtype=np.float32))


def common_nodes(spaces: Sequence[Space]) -> list[str]:
    """Nodes every space has vectors for, sorted."""
    shared = set(spaces[0].nodes)
    for space in spaces[1:]:
        shared &= set(space.nodes)
    return sorted(shared)


def _graph_on(space: Space, nodes: Sequence[str], k: int, stored: KnnGraph | None) -> tuple[Space, KnnGraph, bool]:
    """``space`` restricted to ``nodes`` and its kNN graph there, reusing ``stored`` when it
    was computed on exactly these nodes with this k. Returns (space, graph, reused)."""
    if stored is not None and tuple(nodes) == space.nodes and stored.k == k:
        return space, stored, True
    restricted = space.restrict(nodes)
    return restricted, knn_cosine(restricted.vectors, k), False


@dataclass(frozen=True)
class PairComparison:
    """Two pins of one scope compared on the nodes they share."""

    pin_a: str
    pin_b: str
    scope: str
    nodes: tuple[str, ...]
    plate_ids: tuple[str, ...]
    k: int
    neighbours_a: np.ndarray  # (N, k) row indices into nodes
    neighbours_b: np.ndarray
    jaccard: np.ndarray  # (N,) per-node Jaccard of the two kNN sets
    overlap: np.ndarray  # (N,) per-node |A∩B| / k
    cka: float
    chance_jaccard: float
    graphs_reused: bool  # both graphs came from the atlas run as stored

    @property
    def n(self) -> int:
        return len(self.nodes)

    def summary(self) -> dict[str, float | int | str]:
        values = self.jaccard
        p10, median, p90 = np.quantile(values, [0.1, 0.5, 0.9])
        return {
            "pin_a": self.pin_a,
            "pin_b": self.pin_b,
            "scope": self.scope,
            "nodes": self.n,
            "k": self.k,
            "mean_jaccard": round(float(values.mean()), 4),
            "p10_jaccard": round(float(p10), 4),
            "median_jaccard": round(float(median), 4),
            "p90_jaccard": round(float(p90), 4),
            "chance_jaccard": round(self.chance_jaccard, 4),
            "mean_overlap_at_k": round(float(self.overlap.mean()), 4),
            "linear_cka": round(self.cka, 4),
        }

    def most_disagreeing(self, top_n: int) -> list[int]:
        """Rows with the lowest Jaccard, ties by node id."""
        return sorted(range(self.n), key=lambda i: (self.jaccard[i], self.nodes[i]))[:top_n]

    def table(self) -> pa.Table:
        """One row per node: the two neighbour lists and their overlap."""
        nodes = np.array(self.nodes, dtype=object)
        return pa.table(
            {
                "node": list(self.nodes),
                "plate_id": list(self.plate_ids),
                "jaccard": pa.array(self.jaccard, pa.float32()),
                "overlap_at_k": pa.array(self.overlap, pa.float32()),
                "neighbours_a": [list(row) for row in nodes[self.neighbours_a]],
                "neighbours_b": [list(row) for row in nodes[self.neighbours_b]],
            }
        )


def compare_spaces(a: Space, b: Space, k: int, stored: Mapping[str, KnnGraph] | None = None) -> PairComparison:
    """kNN Jaccard per shared node, linear CKA and the chance level for pins ``a`` and ``b``."""
    if a.scope != b.scope:
        raise ValueError(f"cannot compare scope {a.scope} ({a.pin_key}) with scope {b.scope} ({b.pin_key})")
    nodes = common_nodes([a, b])
    if len(nodes) < 3:
        raise ValueError(f"{a.pin_key} and {b.pin_key} share {len(nodes)} {a.scope} nodes; a comparison needs 3")
    k = effective_k(k, len(nodes))
    stored = stored or {}
    a_on, graph_a, reused_a = _graph_on(a, nodes, k, stored.get(a.pin_key))
    b_on, graph_b, reused_b = _graph_on(b, nodes, k, stored.get(b.pin_key))
    return PairComparison(
        pin_a=a.pin_key,
        pin_b=b.pin_key,
        scope=a.scope,
        nodes=tuple(nodes),
        plate_ids=a_on.plate_ids,
        k=k,
        neighbours_a=graph_a.indices,
        neighbours_b=graph_b.indices,
        jaccard=jaccard(graph_a.indices, graph_b.indices),
        overlap=overlap_at_k(graph_a.indices, graph_b.indices),
        cka=linear_cka(a_on.vectors, b_on.vectors),
        chance_jaccard=chance_jaccard(k, len(nodes)),
        graphs_reused=reused_a and reused_b,
    )


def topology_changes(
    spaces: Sequence[Space], k: int, method: str, stored: Mapping[str, KnnGraph] | None = None
) -> tuple[list[str], list[np.ndarray], int]:
    """Per-node change made by each space in order, on the nodes they all share.
    Returns (nodes, one change array per space, the k used)."""
    nodes = common_nodes(spaces)
    if len(nodes) < 3:
        raise ValueError(f"the ensemble shares {len(nodes)} nodes; the topology report needs 3")
    k = effective_k(k, len(nodes))
    if method == "consensus":
        prefixes = consensus_prefix_knn([space.restrict(nodes).vectors for space in spaces], k)
        return nodes, consensus_changes(prefixes), k
    if method == "union":
        stored = stored or {}
        graphs = [_graph_on(space, nodes, k, stored.get(space.pin_key))[1].indices for space in spaces]
        return nodes, union_changes(graphs), k
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
