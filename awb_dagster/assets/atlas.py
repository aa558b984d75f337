"""Corpus-level assets: the per-pin atlas, the ensemble's disagreement, the topology report.

``atlas`` reads the latest sealed embeddings of the plates now in the catalog (every pin of
every embedding family, or the configured pins) and writes, per pin and scope, the exact
kNN graph and a 2-D map into one sealed run whose manifest lists every record it used.
``ensemble_disagreement`` and ``topology_report`` read that run (the one of ``atlas``'s
latest materialization), so all three describe the same vectors. ``AtlasConfig.scopes`` picks
plate, segment (SAM mask crops) and tile records.

The two analyses are in :mod:`awb_dagster.assets.disagreement` and
:mod:`awb_dagster.assets.topology`, what the three share in :mod:`awb_dagster.assets.corpus`
(automation included); :data:`ATLAS_ASSETS` gathers them for the code location.
"""

import time
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np

from awb_dagster.assets.corpus import (
    ATLAS_CODE_VERSION,
    CORPUS_AUTOMATION,
    FAMILY_ASSETS,
    FAMILY_ORDER,
    metadata_table,
    open_corpus_run,
)
from awb_dagster.assets.disagreement import ensemble_disagreement
from awb_dagster.assets.topology import topology_report
from awb_dagster.atlas.analysis import graph_table
from awb_dagster.atlas.knn import DEFAULT_BLOCK_BYTES, KNN_METHOD, effective_k, knn_cosine
from awb_dagster.atlas.maps import MAP_METHOD, pca_map
from awb_dagster.atlas.plots import map_png, markdown_image, plate_thumbnails
from awb_dagster.atlas.spaces import Space, check_scope, load_space
from awb_dagster.constants import GROUP_ATLAS
from awb_dagster.instruments.common import pin_provenance
from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.model import Registry, RegistryEntry, UnknownModelError
from awb_dagster.resources import AwbHome


class AtlasConfig(dg.Config):
    k: int = 10  # neighbours per node (capped at N-1 for a corpus smaller than k+1)
    scopes: list[str] = ["plate"]  # plate, segment (segment_embeddings), tile (tile_embeddings)
    pins: list[str] = []  # pin keys or instrument ids/keys; empty: the active pin of every embedding instrument
    knn_block_mb: int = DEFAULT_BLOCK_BYTES >> 20  # memory for the blocked kNN's work buffers
    map_thumbnails_max: int = 600  # plate thumbnails on the map up to this many plates
    map_labels_max: int = 60  # node labels on the map up to this many nodes



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
    run = open_corpus_run(store, "atlas", context, config)
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
            "graphs": metadata_table(rows),
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



ATLAS_ASSETS = (atlas, ensemble_disagreement, topology_report)
