"""``probe_axes``: the probes as measured axes of the atlas (seed 7). Per probe pin and axis, the
Spearman rank correlation with each plate-scope map's two principal axes (atlas's latest run) and
with the CLIP-vs-DINOv2 neighbour disagreement per plate; the plates at each end of every shown axis
as thumbnails. One sealed run holds the correlation table."""

import io
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.assets.corpus import ATLAS_KEY, CORPUS_AUTOMATION, metadata_table, open_corpus_run
from awb_dagster.atlas.plots import markdown_image, plate_thumbnails
from awb_dagster.atlas.probe_axes import colored_map_png, correlate, extremes, neighbour_disagreement
from awb_dagster.atlas.probe_axes import probe_axes as axes_of_records
from awb_dagster.constants import GROUP_ATLAS, PROBE_FAMILIES, SCORE_ASSETS, SCORE_FAMILIES
from awb_dagster.provenance.store import RunStore, verified_path
from awb_dagster.resources import AwbHome

PROBE_ASSETS = [*(f"{family}_logits" for family in PROBE_FAMILIES), *SCORE_ASSETS.values()]


class ProbeAxesConfig(dg.Config):
    extremes: int = 3  # plates shown at each end of an axis
    max_axes_shown: int = 12  # axes with thumbnails in the UI (strongest |rho| first)
    # Axes to color every plate-scope map by, as "<probe pin> <axis>" (e.g. "demo-tiny-aesthetic-mlp@a5fe81d300
    # score"); empty: the strongest axis of each probe pin.
    color_maps_by: list[str] = []


def _maps(store: RunStore, manifest) -> dict[str, pa.Table]:
    """Pin key -> the plate-scope graph table (plate_id, x, y, neighbours) of the atlas run."""
    tables = {}
    for item in manifest.payload["inputs"]["spaces"]:
        if item["scope"] == "plate":
            path = verified_path(store, manifest.run_id, item["graph"], manifest.artifact(item["graph"])["sha256"])
            tables[item["pin_key"]] = pq.read_table(path, columns=["plate_id", "x", "y", "neighbours"])
    return tables


def _references(manifest, maps: dict[str, pa.Table]) -> dict[str, dict[str, float]]:
    references: dict[str, dict[str, float]] = {}
    for pin, table in maps.items():
        plates = table["plate_id"].to_pylist()
        references[f"PC1 {pin}"] = dict(zip(plates, table["x"].to_pylist()))
        references[f"PC2 {pin}"] = dict(zip(plates, table["y"].to_pylist()))
    family = {item["pin_key"]: item["family"] for item in manifest.payload["inputs"]["spaces"]}
    clip = next((pin for pin in maps if family[pin] == "clip"), None)
    dinov2 = next((pin for pin in maps if family[pin] == "dinov2"), None)
    if clip and dinov2:
        graphs = {pin: dict(zip(maps[pin]["plate_id"].to_pylist(), maps[pin]["neighbours"].to_pylist())) for pin in (clip, dinov2)}
        references[f"disagreement {clip} vs {dinov2}"] = neighbour_disagreement(graphs[clip], graphs[dinov2])
    return references


def _probe_records(store: RunStore, pin_key: str, plates: set[str]) -> list[dict[str, Any]]:
    """The newest sealed record of each catalog plate for one probe pin."""
    newest = {}
    for pair in sorted(store.sealed_pairs(pin_key).values(), key=lambda p: p.run_id):
        if pair.plate_id in plates:
            newest[pair.plate_id] = pair
    records = []
    for pair in newest.values():
        table = pq.read_table(pair.artifact_path, filters=[("record_id", "in", list(pair.record_ids))])
        records.extend(table.select([c for c in ("plate_id", "score", "labels", "probabilities") if c in table.column_names]).to_pylist())
    return records


def _strip(thumbnails: dict[str, np.ndarray], plate_ids: list[str]) -> bytes:
    """The thumbnails side by side, as PNG bytes."""
    images = [Image.fromarray(thumbnails[p]) for p in plate_ids if p in thumbnails]
    strip = Image.new("RGB", (sum(i.width for i in images) + 4 * len(images), max((i.height for i in images), default=1)), "white")
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width + 4
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def _color_axes(config: ProbeAxesConfig, correlations, axes_of) -> list[tuple[str, str]]:
    """(probe pin, axis) pairs the maps are colored by: the configured ones, else each pin's strongest."""
    if config.color_maps_by:
        chosen = []
        for name in config.color_maps_by:
            pin, _, axis = name.partition(" ")
            if axis not in axes_of.get(pin, {}):
                known = [f"{p} {a}" for p, axes in axes_of.items() for a in axes][:20]
                raise dg.Failure(f"probe_axes: color_maps_by names {name!r}, which is no probe axis here (known: {known})")
            chosen.append((pin, axis))
        return chosen
    strongest: dict[str, tuple[float, str]] = {}
    for c in correlations:
        strength = abs(float(np.nan_to_num(c.rho)))
        if c.probe_pin not in strongest or strength > strongest[c.probe_pin][0]:
            strongest[c.probe_pin] = (strength, c.axis)
    return [(pin, axis) for pin, (_, axis) in strongest.items()]


@dg.asset(
    group_name=GROUP_ATLAS,
    description="Probes as measured axes (seed 7): per probe pin and axis (a score, or a label's probability), "
    "the Spearman rank correlation with each atlas map's principal axes and with the CLIP-vs-DINOv2 "
    "neighbour disagreement per plate, and the plates at each end of the axis.",
    deps=["atlas", *PROBE_ASSETS],
    automation_condition=CORPUS_AUTOMATION,
    kinds={"parquet"},
)
def probe_axes(context: dg.AssetExecutionContext, config: ProbeAxesConfig, home: AwbHome) -> dg.MaterializeResult:
    store, catalog, registry = home.store(), home.catalog(), home.registry()
    event = context.instance.get_latest_materialization_event(ATLAS_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure("probe_axes: atlas has no materialization yet; materialize atlas first")
    manifest = store.manifest(event.asset_materialization.metadata["run_id"].value)
    maps = _maps(store, manifest)
    references = _references(manifest, maps)
    pins = [e.active_pin.key for f in (*PROBE_FAMILIES, *SCORE_FAMILIES) for e in registry.family(f) if e.active_pin]
    correlations, axes_of = [], {}
    for pin in pins:
        axes = axes_of_records(_probe_records(store, pin, set(catalog.plates)))
        axes_of[pin] = axes
        correlations.extend(correlate(pin, axes, references))
    if not correlations:
        raise dg.Failure(
            f"probe_axes: no probe pin ({', '.join(pins) or 'none pinned'}) shares 3 or more plates with "
            f"atlas run {manifest.run_id}; materialize a probe (wikiart_logits, emotion_logits, aesthetic_scores) first"
        )
    run = open_corpus_run(store, "probe-axes", context, config)
    rows = [c.row() for c in correlations]
    artifact = run.write_table("probe-axes", pa.Table.from_pylist(rows))
    run.note("inputs", {"atlas_run": manifest.run_id, "probe_pins": pins, "references": sorted(references)})
    sealed = run.seal()
    strongest = sorted(correlations, key=lambda c: -abs(np.nan_to_num(c.rho)))
    shown = list(dict.fromkeys((c.probe_pin, c.axis) for c in strongest))[: config.max_axes_shown]
    ends = {key: extremes(axes_of[key[0]][key[1]], config.extremes) for key in shown}
    wanted = {p for low, high in ends.values() for p in (*low, *high)}
    thumbs, _ = plate_thumbnails({p: (catalog.plates[p].path, catalog.plates[p].sha256) for p in wanted}, side=72, max_pixels=home.max_pixels)
    markdown = [
        f"### {pin} {axis}\n\nlowest: {', '.join(low)}\n\n{markdown_image(_strip(thumbs, low), 'lowest')}\n\n"
        f"highest: {', '.join(high)}\n\n{markdown_image(_strip(thumbs, high), 'highest')}"
        for (pin, axis), (low, high) in ends.items()
    ]
    colored = []
    for pin, axis in _color_axes(config, correlations, axes_of):
        values = axes_of[pin][axis]
        for map_pin, table in maps.items():
            plates = table["plate_id"].to_pylist()
            keep = [i for i, plate in enumerate(plates) if plate in values]
            if len(keep) < 2:
                continue
            coords = np.column_stack([table["x"].to_numpy(), table["y"].to_numpy()])[keep]
            png = colored_map_png(coords, np.array([values[plates[i]] for i in keep]), title=f"map of {map_pin}", axis=f"{pin} {axis}")
            colored.append(f"### map of {map_pin} colored by {pin} {axis}\n\n{markdown_image(png, f'{map_pin} by {axis}')}")
    return dg.MaterializeResult(
        metadata={
            "maps_by_probe_axis": dg.MetadataValue.md("\n\n".join(colored) or "no axis to color by"),
            "run_id": sealed.run_id,
            "atlas_run": manifest.run_id,
            "correlations": metadata_table(rows),
            "correlations_file": dg.MetadataValue.path(str(sealed.run_dir / artifact.path)),
            "extremes": dg.MetadataValue.md("\n\n".join(markdown)),
            "method": "Spearman rank correlation (scipy.stats.spearmanr) over the plates both sides have; "
            "disagreement = 1 - Jaccard of a plate's kNN neighbour sets in the CLIP and DINOv2 graphs",
        }
    )
