"""``ensemble_disagreement``: for each pair of pins of one scope of ``atlas``'s latest run, the
per-node Jaccard of their kNN sets against chance, linear CKA, and where they disagree most
(headline: the configured pair, else the first CLIP × DINOv2 pair)."""

import itertools
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from awb_dagster.assets.corpus import (
    ATLAS_CODE_VERSION,
    ATLAS_KEY,
    CORPUS_AUTOMATION,
    AtlasRun,
    add_atlas_inputs,
    metadata_table,
    open_corpus_run,
)
from awb_dagster.atlas.analysis import PairComparison, compare_spaces
from awb_dagster.atlas.plots import HistogramPanel, markdown_image, overlap_histograms_png, pair_matrix_png
from awb_dagster.atlas.report import disagreement_markdown, markdown_table
from awb_dagster.constants import GROUP_ATLAS
from awb_dagster.registry.model import Registry
from awb_dagster.resources import AwbHome


class DisagreementConfig(dg.Config):
    headline: list[str] = ["clip-vit-large-patch14", "dinov2-large"]  # the pair to feature first
    top_n: int = 20  # nodes listed where the headline pair disagrees most
    neighbours_shown: int = 5  # neighbours per side in that list



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

    out = open_corpus_run(store, "ensemble-disagreement", context, config)
    add_atlas_inputs(out, run, {pin for c in comparisons for pin in (c.pin_a, c.pin_b)})
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
            "most_disagreeing": metadata_table(_top_rows(headline, config.top_n, config.neighbours_shown)),
            "pairs": metadata_table(rows),
            "jaccard_histograms": dg.MetadataValue.md(markdown_image(histograms_png, "Jaccard histograms of every pair")),
            "pair_matrices": dg.MetadataValue.md(
                "\n\n".join(f"### {scope} scope\n\n{markdown_image(png, scope)}" for scope, png in matrices.items())
            ),
            "similarity_measure": "linear CKA (feature-space form on column-centred L2 vectors, float64)",
        }
    )

