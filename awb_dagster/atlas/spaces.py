"""Embedding spaces read from sealed runs: the L2 vectors of one pin at one scope.

A space holds one row per node, sorted by node id (the plate id at plate scope,
``<plate id>/<region ref>`` at segment and tile scope), so two pins' spaces over the same
nodes line up row for row. Every artifact read is checked against the sha256 its sealed
manifest lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.records import REGION_PAIR_SEPARATOR, SCOPES, tile_pair_key
from awb_dagster.provenance.store import RunStore, SealedPair, StoreError, verified_path

_COLUMNS = ["record_id", "plate_id", "plate_sha256", "region_ref", "scope", "vector_l2"]


def node_id(plate_id: str, region_ref: str | None) -> str:
    """The id of a node of the atlas: the plate, or one region of it."""
    return f"{plate_id}/{region_ref}" if region_ref else plate_id


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")


@dataclass(frozen=True)
class Source:
    """The records used from one artifact of one sealed embeddings run."""

    run_id: str
    artifact: str  # relative to the run directory
    sha256: str
    record_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "artifact": self.artifact, "sha256": self.sha256, "record_ids": list(self.record_ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Source:
        return cls(data["run_id"], data["artifact"], data["sha256"], tuple(data["record_ids"]))


@dataclass(frozen=True)
class Space:
    """The L2-normalized vectors of one pin at one scope, one row per node, sorted by node."""

    pin_key: str
    scope: str
    preprocess_tag: str
    nodes: tuple[str, ...]
    plate_ids: tuple[str, ...]
    plate_sha256s: tuple[str, ...]
    record_ids: tuple[str, ...]
    vectors: np.ndarray  # (N, d) float32
    sources: tuple[Source, ...]

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def restrict(self, nodes: Sequence[str]) -> Space:
        """The same space on a subset of its nodes (kept in sorted order)."""
        wanted = set(nodes)
        rows = [i for i, node in enumerate(self.nodes) if node in wanted]
        if len(rows) != len(wanted):
            missing = sorted(wanted - set(self.nodes))[:5]
            raise ValueError(f"{self.pin_key} ({self.scope}) has no vectors for {missing}")
        return replace(
            self,
            nodes=tuple(self.nodes[i] for i in rows),
            plate_ids=tuple(self.plate_ids[i] for i in rows),
            plate_sha256s=tuple(self.plate_sha256s[i] for i in rows),
            record_ids=tuple(self.record_ids[i] for i in rows),
            vectors=self.vectors[rows],
        )


def scope_pairs(store: RunStore, pin_key: str, scope: str) -> list[SealedPair]:
    """The latest sealed pairs holding ``pin_key``'s records at ``scope``: plate records under the
    pin itself, tiles under ``<pin>~tiles``, segments under ``<pin>~<sam pin>`` (every SAM pin;
    their tags differ, so :func:`choose_pairs` keeps one mask set)."""
    if scope == "plate":
        return list(store.sealed_pairs(pin_key).values())
    if scope == "tile":
        return list(store.sealed_pairs(tile_pair_key(pin_key)).values())
    prefix = f"{pin_key}{REGION_PAIR_SEPARATOR}"
    found: dict[tuple[str, str, str, str], SealedPair] = {}
    for manifest in store.manifests():
        for pair in manifest.pairs:
            key = pair["pin_key"]
            if key.startswith(prefix) and key != tile_pair_key(pin_key):
                found[(key, pair["plate_id"], pair["plate_sha256"], pair["preprocess_tag"])] = manifest.sealed_pair(pair)
    return list(found.values())


def choose_pairs(
    store: RunStore, pin_key: str, plates: Mapping[str, str], scope: str = "plate"
) -> tuple[list[SealedPair], str | None, dict[str, int]]:
    """The latest sealed pair of each catalog plate for ``pin_key`` at ``scope``, under one preprocess tag.

    ``plates`` maps plate id to the sha256 the catalog holds now; pairs of other bytes are
    left out. When the pin was run under several preprocess tags, the tag covering the most
    plates wins (ties: the newest run), since two pipelines never share one space.
    Returns (pairs, tag, counts of pairs left out by reason).
    """
    current = [p for p in scope_pairs(store, pin_key, scope) if plates.get(p.plate_id) == p.plate_sha256]
    skipped: dict[str, int] = {}
    if not current:
        return [], None, skipped
    coverage = Counter(p.preprocess_tag for p in current)
    newest = {p.preprocess_tag: p.run_id for p in sorted(current, key=lambda p: p.run_id)}
    tag = max(coverage, key=lambda t: (coverage[t], newest[t]))
    for other, count in coverage.items():
        if other != tag:
            skipped[f"under another preprocess tag ({other})"] = count
    return [p for p in current if p.preprocess_tag == tag], tag, skipped


def _read(path: str, record_ids: Sequence[str], scope: str) -> pa.Table:
    return pq.read_table(path, columns=_COLUMNS, filters=[("record_id", "in", list(record_ids)), ("scope", "=", scope)])


def _assemble(pin_key: str, scope: str, tag: str, tables: list[pa.Table], sources: list[Source]) -> Space:
    table = pa.concat_tables(tables).combine_chunks()
    dims = {t.schema.field("vector_l2").type.list_size for t in tables}
    if len(dims) != 1:
        raise StoreError(f"{pin_key}: artifacts disagree on the vector dim ({sorted(dims)})")
    nodes = [node_id(p, r) for p, r in zip(table["plate_id"].to_pylist(), table["region_ref"].to_pylist())]
    if len(set(nodes)) != len(nodes):
        twice = [node for node, count in Counter(nodes).items() if count > 1][:5]
        raise StoreError(f"{pin_key} ({scope}): nodes {twice} have more than one record in the chosen pairs")
    order = np.argsort(np.array(nodes, dtype=object), kind="stable")
    vectors = table["vector_l2"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(vectors.reshape(len(nodes), dims.pop())[order], dtype=np.float32)
    def column(name: str) -> tuple[str, ...]:
        values = table[name].to_pylist()
        return tuple(values[i] for i in order)

    return Space(
        pin_key=pin_key,
        scope=scope,
        preprocess_tag=tag,
        nodes=tuple(nodes[i] for i in order),
        plate_ids=column("plate_id"),
        plate_sha256s=column("plate_sha256"),
        record_ids=column("record_id"),
        vectors=vectors,
        sources=tuple(sources),
    )


def load_space(
    store: RunStore, pin_key: str, scope: str, plates: Mapping[str, str]
) -> tuple[Space | None, dict[str, int]]:
    """The vectors of ``pin_key`` at ``scope`` for the catalog's plates, from the latest
    sealed pairs (see :func:`choose_pairs`). ``None`` when there are none; the dict counts
    pairs left out by reason."""
    check_scope(scope)
    pairs, tag, skipped = choose_pairs(store, pin_key, plates, scope)
    by_artifact: dict[tuple[str, str, str], list[str]] = {}
    for pair in pairs:
        by_artifact.setdefault((pair.run_id, pair.artifact, pair.artifact_sha256), []).extend(pair.record_ids)
    tables, sources = [], []
    for (run_id, artifact, sha256), record_ids in sorted(by_artifact.items()):
        table = _read(verified_path(store, run_id, artifact, sha256), record_ids, scope)
        if table.num_rows:
            tables.append(table)
            sources.append(Source(run_id, artifact, sha256, tuple(table["record_id"].to_pylist())))
    if not tables:
        return None, skipped
    return _assemble(pin_key, scope, tag, tables, sources), skipped


def read_space(store: RunStore, *, pin_key: str, scope: str, preprocess_tag: str, sources: Sequence[Source]) -> Space:
    """Exactly the records ``sources`` name (as an atlas run lists them), checksums verified."""
    tables = []
    for source in sources:
        table = _read(verified_path(store, source.run_id, source.artifact, source.sha256), source.record_ids, scope)
        if table.num_rows != len(source.record_ids):
            raise StoreError(
                f"run {source.run_id}, {source.artifact}: {len(source.record_ids)} {scope} records listed, "
                f"{table.num_rows} found; the atlas run and its inputs disagree"
            )
        tables.append(table)
    if not tables:
        raise StoreError(f"{pin_key} ({scope}): no sources listed")
    return _assemble(pin_key, scope, preprocess_tag, tables, list(sources))
