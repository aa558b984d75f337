"""Corpus-level assets: the per-pin atlas, the ensemble's disagreement, the topology report.

``atlas`` reads the latest sealed embeddings of the plates now in the catalog (every pin of
every embedding family, or the configured pins) and writes, per pin and scope, the exact
kNN graph and a 2-D map into one sealed run whose manifest lists every record it used.
``ensemble_disagreement`` and ``topology_report`` read that run (the one of ``atlas``'s
latest materialization), so all three describe the same vectors. ``AtlasConfig.scopes`` picks
plate, segment (SAM mask crops) and tile records.

Re-computation: ``atlas`` depends on every partition of the family assets, an edge across
which Dagster does not propagate staleness. :data:`CORPUS_AUTOMATION` requests an asset
once its upstream has new materializations and nothing upstream is still running; the code
location's automation sensor (``awb_automation_sensor``, running by default, targets every
asset) evaluates it.
"""

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.atlas.analysis import (
    PairComparison,
    compare_spaces,
    graph_from_table,
    graph_table,
    topology_changes,
)
from awb_dagster.atlas.knn import DEFAULT_BLOCK_BYTES, KNN_METHOD, KnnGraph, effective_k, knn_cosine
from awb_dagster.atlas.maps import MAP_METHOD, pca_map
from awb_dagster.atlas.plots import (
    HistogramPanel,
    map_png,
    markdown_image,
    overlap_histograms_png,
    pair_matrix_png,
    plate_thumbnails,
    topology_png,
)
from awb_dagster.atlas.report import disagreement_markdown, markdown_table, topology_markdown
from awb_dagster.atlas.spaces import Source, Space, check_scope, load_space, read_space
from awb_dagster.atlas.topology import METHODS, TopologyStep, evaluate_order, first_stop
from awb_dagster.constants import GROUP_ATLAS
from awb_dagster.instruments.common import pin_provenance
from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.provenance.store import Manifest, OpenRun, RunStore, verified_path
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.model import Registry, RegistryEntry, UnknownModelError
from awb_dagster.resources import AwbHome

ATLAS_CODE_VERSION = "atlas-1"
# Seed: "the minimum recommended ensemble is CLIP + DINOv2", so they come first in the default order.
FAMILY_ORDER = ("clip", "dinov2", "siglip")
FAMILY_ASSETS = [f"{family}_embeddings" for family in FAMILY_ORDER]
ATLAS_KEY = dg.AssetKey("atlas")

CORPUS_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("upstream has new materializations, none in progress")


class AtlasConfig(dg.Config):
    k: int = 10  # neighbours per node (capped at N-1 for a corpus smaller than k+1)
    scopes: list[str] = ["plate"]  # plate, segment (segment_embeddings), tile (tile_embeddings)
    pins: list[str] = []  # pin keys or instrument ids/keys; empty: the active pin of every embedding instrument
    knn_block_mb: int = DEFAULT_BLOCK_BYTES >> 20  # memory for the blocked kNN's work buffers
    map_thumbnails_max: int = 600  # plate thumbnails on the map up to this many plates
    map_labels_max: int = 60  # node labels on the map up to this many nodes


class DisagreementConfig(dg.Config):
    headline: list[str] = ["clip-vit-large-patch14", "dinov2-large"]  # the pair to feature first
    top_n: int = 20  # nodes listed where the headline pair disagrees most
    neighbours_shown: int = 5  # neighbours per side in that list


class TopologyConfig(dg.Config):
    order: list[str] = []  # pin keys or instrument ids/keys; empty: CLIP, then DINOv2, then SigLIP pins
    method: str = "consensus"  # or "union" (see awb_dagster.atlas.topology.METHODS)
    threshold: float = 0.1  # mean share of consensus neighbours a pin must change to count
    minimum_ensemble: int = 2  # the first pins of the order, kept whatever their verdict (seed: CLIP + DINOv2)
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0


# --- resolving pins ------------------------------------------------------------------------


def _entry_and_pin(registry: Registry, name: str) -> tuple[RegistryEntry, Pin]:
    """A pin key names that pin; an instrument id, key or alias names its active pin."""
    pin = registry.lock.find_key(name)
    entry = registry.get(pin.model_id if pin else name)
    pin = pin or entry.active_pin
    if pin is None:
        raise UnknownModelError(f"{name!r} has no pin in {registry.lock_path}; run `awb pin {entry.instrument.id}`")
    if entry.instrument.family not in FAMILY_ORDER:
        raise UnknownModelError(f"{name!r} is a {entry.instrument.family} instrument, not an embedding backbone")
    return entry, pin


def atlas_pins(registry: Registry, names: Sequence[str]) -> list[tuple[RegistryEntry, Pin]]:
    """The pins the atlas covers, CLIP first, then DINOv2, then SigLIP, in roster order."""
    if names:
        chosen = [_entry_and_pin(registry, name) for name in names]
    else:
        chosen = [
            (entry, entry.active_pin)
            for family in FAMILY_ORDER
            for entry in registry.family(family)
            if entry.active_pin is not None
        ]
    rank = {family: i for i, family in enumerate(FAMILY_ORDER)}
    unique = {pin.key: (entry, pin) for entry, pin in chosen}
    return sorted(unique.values(), key=lambda item: rank[item[0].instrument.family])


def _describe_pin(entry: RegistryEntry, pin: Pin, preprocess_tag: str) -> dict[str, Any]:
    return {**pin_provenance(entry.instrument, pin), "preprocess_tag": preprocess_tag}


# --- the atlas -----------------------------------------------------------------------------


def _open_run(store: RunStore, kind: str, context: dg.AssetExecutionContext, config: dg.Config) -> OpenRun:
    return store.open_run(
        kind=kind,
        dagster_run_id=context.run_id,
        code_version=ATLAS_CODE_VERSION,
        device="cpu",
        config=config.model_dump(),
    )


def _table_schema(row: dict[str, Any]) -> dg.TableSchema:
    kinds = {bool: "bool", int: "int", float: "float"}
    return dg.TableSchema.from_name_type_dict({name: kinds.get(type(v), "string") for name, v in row.items()})


def _metadata_table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    return dg.MetadataValue.table([dg.TableRecord(row) for row in rows], schema=_table_schema(rows[0]))


@dg.asset(
    group_name=GROUP_ATLAS,
    description="Per embedding pin and scope: the exact cosine kNN graph of the L2 vectors and a "
    "2-D PCA map of the corpus, in one sealed run that lists every record used.",
    deps=[*FAMILY_ASSETS, "segment_embeddings", "tile_embeddings"],
    code_version=ATLAS_CODE_VERSION,
    automation_condition=CORPUS_AUTOMATION,
    kinds={"numpy", "parquet"},
)
def atlas(context: dg.AssetExecutionContext, config: AtlasConfig, home: AwbHome) -> dg.MaterializeResult:
    for scope in config.scopes:
        check_scope(scope)
    if config.k < 1:
        raise dg.Failure(f"atlas: k must be at least 1, got {config.k}")
    registry, catalog, store = home.registry(), home.catalog(), home.store()
    plates = {plate_id: plate.sha256 for plate_id, plate in catalog.plates.items()}
    started = time.perf_counter()
    loaded: list[tuple[RegistryEntry, Pin, Space]] = []
    skipped: dict[str, Any] = {}
    for entry, pin in atlas_pins(registry, config.pins):
        for scope in config.scopes:
            space, left_out = load_space(store, pin.key, scope, plates)
            if space is None or space.n < 2:
                left_out["too few vectors for the catalog's plates"] = 0 if space is None else space.n
            else:
                loaded.append((entry, pin, space))
            if left_out:
                skipped[f"{pin.key} ({scope})"] = left_out
    if not loaded:
        raise dg.Failure(
            "atlas: no pin has sealed embeddings for two or more catalog plates "
            f"(scopes {config.scopes}, pins {[p.key for _, p in atlas_pins(registry, config.pins)] or 'none'}); "
            "materialize clip_embeddings / dinov2_embeddings / siglip_embeddings first"
        )
    thumbnails, thumbnail_failures = _thumbnails(catalog, loaded, config, home.max_pixels)
    run = _open_run(store, "atlas", context, config)
    rows, maps_md, inputs = [], [], []
    for entry, pin, space in loaded:
        if pin.key not in {i["pin_key"] for i in run.instruments}:
            run.add_instrument(_describe_pin(entry, pin, space.preprocess_tag))
        for plate_id, sha256 in sorted(set(zip(space.plate_ids, space.plate_sha256s))):
            run.add_plate({"plate_id": plate_id, "sha256": sha256, "source_paths": list(catalog.plates[plate_id].source_paths)})
        k = effective_k(config.k, space.n)
        knn_started = time.perf_counter()
        graph = knn_cosine(space.vectors, k, block_bytes=config.knn_block_mb << 20)
        knn_seconds = time.perf_counter() - knn_started
        atlas_map = pca_map(space.vectors)
        graph_artifact = run.write_table(f"atlas-{space.scope}-{pin.key}", graph_table(space, graph, atlas_map))
        show_thumbnails = space.scope == "plate" and space.n <= config.map_thumbnails_max
        png = map_png(
            atlas_map.coords,
            space.nodes,
            title=f"{pin.key} ({space.scope} scope, {space.n} nodes)",
            subtitle=f"PCA of the L2 vectors: axes explain {atlas_map.explained_variance[0]:.1%} and "
            f"{atlas_map.explained_variance[1]:.1%} of the variance",
            thumbnails=thumbnails if show_thumbnails else None,
            show_labels=space.n <= config.map_labels_max,
        )
        map_artifact = run.write_bytes(f"map-{space.scope}-{pin.key}.png", png)
        maps_md.append(f"### {pin.key} ({space.scope})\n\n{markdown_image(png, f'map of {pin.key}')}")
        inputs.append(
            {
                "pin_key": pin.key,
                "scope": space.scope,
                "model_id": entry.instrument.id,
                "instrument_key": entry.instrument.key,
                "family": entry.instrument.family,
                "preprocess_tag": space.preprocess_tag,
                "nodes": space.n,
                "dim": space.dim,
                "k": k,
                "graph": graph_artifact.path,
                "map": map_artifact.path,
                "sources": [source.to_json() for source in space.sources],
            }
        )
        rows.append(
            {
                "pin": pin.key,
                "model_id": entry.instrument.id,
                "scope": space.scope,
                "nodes": space.n,
                "dim": space.dim,
                "k": k,
                "method": "exact",
                "recall": graph.recall,
                "mean_top1_cosine": round(float(graph.similarities[:, 0].mean()), 4),
                "knn_seconds": round(knn_seconds, 3),
                "graph": graph_artifact.path,
                "graph_sha256": graph_artifact.sha256,
            }
        )
    run.note("inputs", {"spaces": inputs, "skipped": skipped, "thumbnail_failures": thumbnail_failures})
    run.note("methods", {"knn": KNN_METHOD, "recall": 1.0, "map": MAP_METHOD})
    manifest = run.seal()
    context.log.info(f"atlas: {len(rows)} graphs sealed in run {manifest.run_id}")
    return dg.MaterializeResult(
        metadata={
            "run_id": manifest.run_id,
            "run_dir": dg.MetadataValue.path(str(manifest.run_dir)),
            "k": config.k,
            "scopes": dg.MetadataValue.json(config.scopes),
            "pins": dg.MetadataValue.json(sorted({row["pin"] for row in rows})),
            "knn_method": KNN_METHOD,
            "knn_recall": 1.0,
            "map_method": MAP_METHOD,
            "graphs": _metadata_table(rows),
            "maps": dg.MetadataValue.md("\n\n".join(maps_md)),
            "skipped": dg.MetadataValue.json(skipped),
            "thumbnail_failures": dg.MetadataValue.json(thumbnail_failures),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


def _thumbnails(
    catalog: PlateCatalog, loaded: list[tuple[RegistryEntry, Pin, Space]], config: AtlasConfig, max_pixels: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Thumbnails of the plates of every plate-scope space small enough to show them."""
    wanted = {
        plate_id
        for _, _, space in loaded
        if space.scope == "plate" and space.n <= config.map_thumbnails_max
        for plate_id in space.plate_ids
    }
    plates = {pid: (catalog.plates[pid].path, catalog.plates[pid].sha256) for pid in sorted(wanted)}
    return plate_thumbnails(plates, side=96, max_pixels=max_pixels)


# --- reading an atlas run ------------------------------------------------------------------


class AtlasRun:
    """The sealed run of ``atlas``'s latest materialization: its spaces and graphs."""

    def __init__(self, store: RunStore, manifest: Manifest):
        self.manifest = manifest
        self.inputs: list[dict[str, Any]] = manifest.payload["inputs"]["spaces"]
        self.spaces: dict[tuple[str, str], Space] = {}
        self.graphs: dict[tuple[str, str], KnnGraph] = {}
        for item in self.inputs:
            space = read_space(
                store,
                pin_key=item["pin_key"],
                scope=item["scope"],
                preprocess_tag=item["preprocess_tag"],
                sources=[Source.from_json(s) for s in item["sources"]],
            )
            path = verified_path(store, manifest.run_id, item["graph"], manifest.artifact(item["graph"])["sha256"])
            key = (item["pin_key"], item["scope"])
            self.spaces[key] = space
            self.graphs[key] = graph_from_table(pq.read_table(path), space)

    @classmethod
    def latest(cls, context: dg.AssetExecutionContext, store: RunStore) -> "AtlasRun":
        event = context.instance.get_latest_materialization_event(ATLAS_KEY)
        if event is None or event.asset_materialization is None:
            raise dg.Failure("atlas has no materialization yet; materialize atlas first")
        return cls(store, store.manifest(event.asset_materialization.metadata["run_id"].value))

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def k(self) -> int:
        """The k the atlas was configured with (each graph caps it at N-1)."""
        return self.manifest.payload["config"]["k"]

    def scopes(self) -> list[str]:
        return list(dict.fromkeys(item["scope"] for item in self.inputs))

    def items(self, scope: str) -> list[dict[str, Any]]:
        return [item for item in self.inputs if item["scope"] == scope]

    def stored(self, scope: str) -> dict[str, KnnGraph]:
        return {pin: graph for (pin, s), graph in self.graphs.items() if s == scope}

    def find(self, registry: Registry, name: str, scope: str) -> list[str]:
        """Pin keys of this run at ``scope`` that ``name`` names: a pin key names itself, an
        instrument id, key or alias its pins here. An unknown name raises ``UnknownModelError``."""
        pins = [item["pin_key"] for item in self.items(scope)]
        if name in pins:
            return [name]
        if registry.lock.find_key(name) is not None:
            return []  # a pin this run does not hold (an older pin, another scope)
        key = registry.get(name).instrument.key
        return [item["pin_key"] for item in self.items(scope) if item["instrument_key"] == key]

    def resolve(self, registry: Registry, name: str, scope: str) -> str:
        """The one pin key of this run that ``name`` names, or a failure that says what to do."""
        matches = self.find(registry, name, scope)
        if len(matches) != 1:
            available = ", ".join(item["pin_key"] for item in self.items(scope)) or "none"
            problem = "has no vectors in" if not matches else "has several pins in"
            raise dg.Failure(
                f"{name!r} {problem} atlas run {self.run_id} ({scope} scope; pins: {available}); "
                "name one of those pins, or materialize its embeddings and then the atlas"
            )
        return matches[0]


def _models(run: AtlasRun) -> dict[str, str]:
    return {item["pin_key"]: item["model_id"] for item in run.inputs}


def _add_inputs(out: OpenRun, run: AtlasRun, pins: set[str]) -> None:
    """The atlas run, its instruments, plates and records used, as inputs of a downstream run."""
    chosen = [item for item in run.inputs if item["pin_key"] in pins]
    for item in chosen:
        space = run.spaces[(item["pin_key"], item["scope"])]
        for plate_id, sha256 in zip(space.plate_ids, space.plate_sha256s):
            out.add_plate({"plate_id": plate_id, "sha256": sha256})
    for instrument in run.manifest.payload["instruments"]:
        if instrument["pin_key"] in pins:
            out.add_instrument(instrument)
    out.note("inputs", {"atlas_run_id": run.run_id, "spaces": chosen})


# --- ensemble disagreement -----------------------------------------------------------------


def _headline(
    registry: Registry, run: AtlasRun, names: list[str], comparisons: list[PairComparison]
) -> tuple[PairComparison, str]:
    """The configured pair when the atlas has both, else the first CLIP × DINOv2 pair, else the first pair."""
    families = {item["pin_key"]: item["family"] for item in run.inputs}
    configured = " vs ".join(names)
    for comparison in comparisons:
        wanted = [run.find(registry, name, comparison.scope) for name in names]
        if all(len(found) == 1 for found in wanted) and {comparison.pin_a, comparison.pin_b} == {f[0] for f in wanted}:
            return comparison, f"Headline pair as configured ({configured})"
    for comparison in comparisons:
        if {families[comparison.pin_a], families[comparison.pin_b]} == {"clip", "dinov2"}:
            return comparison, f"The configured headline ({configured}) is not in the atlas; this is its first CLIP × DINOv2 pair"
    return comparisons[0], f"The configured headline ({configured}) is not in the atlas, nor any CLIP × DINOv2 pair; this is its first pair"


def _matrix_png(run: AtlasRun, scope: str, comparisons: list[PairComparison]) -> bytes:
    """Pins × pins mean Jaccard and linear CKA of one scope."""
    pins = [item["pin_key"] for item in run.items(scope)]
    position = {pin: i for i, pin in enumerate(pins)}
    jaccard, cka = np.eye(len(pins)), np.eye(len(pins))
    for c in comparisons:
        i, j = position[c.pin_a], position[c.pin_b]
        jaccard[i, j] = jaccard[j, i] = float(c.jaccard.mean())
        cka[i, j] = cka[j, i] = c.cka
    return pair_matrix_png(pins, jaccard, cka)


def _top_rows(comparison: PairComparison, top_n: int, shown: int) -> list[dict[str, Any]]:
    nodes = comparison.nodes
    return [
        {
            "node": nodes[i],
            "jaccard": round(float(comparison.jaccard[i]), 4),
            f"neighbours in {comparison.pin_a}": ", ".join(nodes[j] for j in comparison.neighbours_a[i][:shown]),
            f"neighbours in {comparison.pin_b}": ", ".join(nodes[j] for j in comparison.neighbours_b[i][:shown]),
        }
        for i in comparison.most_disagreeing(top_n)
    ]


@dg.asset(
    group_name=GROUP_ATLAS,
    description="For each pair of pins of one scope: per-node Jaccard of kNN sets, its corpus mean "
    "and distribution against chance, linear CKA, and the nodes where the two disagree most.",
    deps=[ATLAS_KEY],
    code_version=ATLAS_CODE_VERSION,
    automation_condition=CORPUS_AUTOMATION,
    kinds={"numpy", "parquet"},
)
def ensemble_disagreement(
    context: dg.AssetExecutionContext, config: DisagreementConfig, home: AwbHome
) -> dg.MaterializeResult:
    store, registry = home.store(), home.registry()
    run = AtlasRun.latest(context, store)
    comparisons = [
        compare_spaces(run.spaces[(a["pin_key"], scope)], run.spaces[(b["pin_key"], scope)], run.k, run.stored(scope))
        for scope in run.scopes()
        for a, b in itertools.combinations(run.items(scope), 2)
    ]
    if not comparisons:
        raise dg.Failure(
            f"ensemble_disagreement needs two pins of one scope; atlas run {run.run_id} has "
            f"{', '.join(item['pin_key'] for item in run.inputs)}. Pin and embed a second instrument "
            "(the minimum recommended ensemble is CLIP + DINOv2), then materialize the atlas."
        )
    headline, reason = _headline(registry, run, config.headline, comparisons)
    headline_png = overlap_histograms_png(
        [HistogramPanel(f"{headline.pin_a} vs {headline.pin_b}", headline.jaccard, headline.chance_jaccard, headline.k)]
    )

    def headline_markdown(histogram: str) -> str:
        return disagreement_markdown(
            headline, reason, top_n=config.top_n, neighbours_shown=config.neighbours_shown, histogram=histogram
        )

    histograms_png = overlap_histograms_png(
        [HistogramPanel(f"{c.pin_a} vs {c.pin_b} ({c.scope})", c.jaccard, c.chance_jaccard, c.k) for c in comparisons]
    )
    matrices = {scope: _matrix_png(run, scope, [c for c in comparisons if c.scope == scope]) for scope in run.scopes()}

    out = _open_run(store, "ensemble-disagreement", context, config)
    _add_inputs(out, run, {pin for c in comparisons for pin in (c.pin_a, c.pin_b)})
    rows = []
    for c in comparisons:
        artifact = out.write_table(f"disagreement-{c.scope}-{c.pin_a}--{c.pin_b}", c.table())
        rows.append({**c.summary(), "graphs_from_atlas": c.graphs_reused, "artifact": artifact.path})
    out.write_table("pairs", pa.Table.from_pylist(rows))
    out.write_bytes("jaccard-histograms.png", histograms_png)
    for scope, png in matrices.items():
        out.write_bytes(f"pair-matrix-{scope}.png", png)
    histogram = out.write_bytes("headline-histogram.png", headline_png)
    report_md = headline_markdown(f"![Jaccard histogram]({histogram.path})")
    report = out.write_bytes("disagreement.md", f"{report_md}\n\n## All pairs\n\n{markdown_table(rows, list(rows[0]))}\n".encode())
    manifest = out.seal()
    summary = headline.summary()
    return dg.MaterializeResult(
        metadata={
            "run_id": manifest.run_id,
            "run_dir": dg.MetadataValue.path(str(manifest.run_dir)),
            "report": dg.MetadataValue.path(str(manifest.run_dir / report.path)),
            "atlas_run_id": run.run_id,
            "headline_pair": f"{headline.pin_a} vs {headline.pin_b} ({headline.scope})",
            "headline_mean_jaccard": summary["mean_jaccard"],
            "headline_chance_jaccard": summary["chance_jaccard"],
            "headline_linear_cka": summary["linear_cka"],
            "headline": dg.MetadataValue.md(headline_markdown(markdown_image(headline_png, "Jaccard histogram"))),
            "most_disagreeing": _metadata_table(_top_rows(headline, config.top_n, config.neighbours_shown)),
            "pairs": _metadata_table(rows),
            "jaccard_histograms": dg.MetadataValue.md(markdown_image(histograms_png, "Jaccard histograms of every pair")),
            "pair_matrices": dg.MetadataValue.md(
                "\n\n".join(f"### {scope} scope\n\n{markdown_image(png, scope)}" for scope, png in matrices.items())
            ),
            "similarity_measure": "linear CKA (feature-space form on column-centred L2 vectors, float64)",
        }
    )


# --- topology report -----------------------------------------------------------------------


@dataclass(frozen=True)
class _ScopeTopology:
    """The topology of one scope's ordered ensemble, ready to write."""

    scope: str
    nodes: list[str]
    plate_ids: list[str]
    steps: list[TopologyStep]
    changes: list[np.ndarray]
    png: bytes
    report_args: dict[str, Any]


def _check_topology_config(config: TopologyConfig) -> None:
    if config.method not in METHODS:
        raise dg.Failure(f"topology_report: method must be one of {', '.join(METHODS)}, got {config.method!r}")
    if not 0 < config.threshold <= 1:
        raise dg.Failure(f"topology_report: threshold must be in (0, 1], got {config.threshold}")
    if config.minimum_ensemble < 1:
        raise dg.Failure(f"topology_report: minimum_ensemble must be at least 1, got {config.minimum_ensemble}")
    if config.bootstrap_samples < 1 or not 0 < config.confidence < 1:
        raise dg.Failure("topology_report: bootstrap_samples must be >= 1 and confidence in (0, 1)")


@dg.asset(
    group_name=GROUP_ATLAS,
    description="The ensemble's documented stop condition: pins added in the configured order, the "
    "change each makes to the consensus kNN graph with a bootstrap interval over plates, and a "
    "verdict per pin ('changes the atlas' or 'below threshold: stop').",
    deps=[ATLAS_KEY],
    code_version=ATLAS_CODE_VERSION,
    automation_condition=CORPUS_AUTOMATION,
    kinds={"numpy", "markdown"},
)
def topology_report(context: dg.AssetExecutionContext, config: TopologyConfig, home: AwbHome) -> dg.MaterializeResult:
    _check_topology_config(config)
    store, registry = home.store(), home.registry()
    run = AtlasRun.latest(context, store)
    models = _models(run)
    results = []
    for scope in run.scopes():
        order = [run.resolve(registry, name, scope) for name in config.order] or [i["pin_key"] for i in run.items(scope)]
        if len(set(order)) != len(order):
            raise dg.Failure(f"topology_report: the order names a pin twice: {order}")
        if len(order) < 2:
            continue
        spaces = [run.spaces[(pin, scope)] for pin in order]
        nodes, changes, k_used = topology_changes(spaces, run.k, config.method, run.stored(scope))
        plate_of = dict(zip(spaces[0].nodes, spaces[0].plate_ids))
        groups = [plate_of[node] for node in nodes]
        steps = evaluate_order(
            order, changes, threshold=config.threshold, groups=groups,
            samples=config.bootstrap_samples, confidence=config.confidence, seed=config.seed,
        )  # fmt: skip
        png = topology_png(steps, threshold=config.threshold, title=f"{scope} scope: change per added pin ({config.method})")
        report_args = dict(
            scope=scope, method=config.method, threshold=config.threshold, k=k_used, nodes=len(nodes),
            models=models, atlas_run_id=run.run_id, keep=config.minimum_ensemble,
        )  # fmt: skip
        results.append(_ScopeTopology(scope, nodes, groups, steps, changes, png, report_args))
    if not results:
        raise dg.Failure(
            f"topology_report needs at least two pins of one scope; atlas run {run.run_id} has "
            f"{', '.join(item['pin_key'] for item in run.inputs)}. The minimum recommended ensemble is CLIP + DINOv2."
        )

    out = _open_run(store, "topology-report", context, config)
    _add_inputs(out, run, {step.pin_key for result in results for step in result.steps})
    file_sections, ui_sections, verdicts, stops = [], [], [], {}
    for result in results:
        scope, steps = result.scope, result.steps
        plot = out.write_bytes(f"topology-{scope}.png", result.png)
        columns = {"node": result.nodes, "plate_id": result.plate_ids}
        columns.update({f"change {step.position}: {step.pin_key}": change for step, change in zip(steps, result.changes)})
        out.write_table(f"topology-changes-{scope}", pa.table(columns))
        file_sections.append(topology_markdown(steps, plot=f"![change per added pin]({plot.path})", **result.report_args))
        ui_sections.append(topology_markdown(steps, plot=markdown_image(result.png, "change per added pin"), **result.report_args))
        stop = first_stop(steps, config.minimum_ensemble)
        stops[scope] = stop.pin_key if stop else None
        verdicts += [
            {
                "scope": scope,
                "position": step.position,
                "pin": step.pin_key,
                "model_id": models[step.pin_key],
                "mean_change": round(step.change.mean, 4),
                "ci_low": round(step.change.low, 4),
                "ci_high": round(step.change.high, 4),
                "verdict": step.verdict,
                "straddles_threshold": step.uncertain,
                "minimum_ensemble": step.position <= config.minimum_ensemble,
            }
            for step in steps
        ]
    report = out.write_bytes("topology_report.md", "\n\n".join(file_sections).encode())
    out.write_table("verdicts", pa.Table.from_pylist(verdicts))
    manifest = out.seal()
    return dg.MaterializeResult(
        metadata={
            "run_id": manifest.run_id,
            "run_dir": dg.MetadataValue.path(str(manifest.run_dir)),
            "atlas_run_id": run.run_id,
            "report": dg.MetadataValue.md("\n\n".join(ui_sections)),
            "report_file": dg.MetadataValue.path(str(manifest.run_dir / report.path)),
            "verdicts": _metadata_table(verdicts),
            "stop_before": dg.MetadataValue.json(stops),
            "method": config.method,
            "method_description": METHODS[config.method],
            "threshold": config.threshold,
            "bootstrap": f"{config.confidence:.0%} percentile interval over plates, {config.bootstrap_samples} samples, seed {config.seed}",
        }
    )


ATLAS_ASSETS = (atlas, ensemble_disagreement, topology_report)
