"""Markdown for the disagreement summary and the topology report (shown in the UI and written
into the sealed run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from awb_dagster.atlas.analysis import PairComparison
from awb_dagster.atlas.compare import Interval
from awb_dagster.atlas.topology import METHODS, STOP, TopologyStep, first_stop

SEED_STOP_RULE = "stop adding models when they stop changing the atlas topology"
SEED_ENSEMBLE = "the minimum recommended ensemble is CLIP + DINOv2 so disagreement is measurable"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _interval(interval: Interval) -> str:
    return f"{interval.low:.3f} to {interval.high:.3f}"


def disagreement_markdown(
    headline: PairComparison, reason: str, *, top_n: int, neighbours_shown: int, histogram: str
) -> str:
    """The headline pair: overlap, CKA, the histogram and the nodes where the pins disagree most."""
    summary = headline.summary()
    lines = [
        f"## {headline.pin_a} vs {headline.pin_b} ({headline.scope} scope)",
        "",
        f"{reason}. Seed: \"{SEED_ENSEMBLE}\".",
        "",
        f"- nodes shared: {headline.n}, k = {headline.k}",
        f"- mean Jaccard of kNN sets: **{summary['mean_jaccard']}** (chance {summary['chance_jaccard']}; "
        f"p10 {summary['p10_jaccard']}, median {summary['median_jaccard']}, p90 {summary['p90_jaccard']})",
        f"- mean overlap@k: {summary['mean_overlap_at_k']} (chance {headline.k / (headline.n - 1):.4f})",
        f"- linear CKA: **{summary['linear_cka']}**",
        "",
        histogram,
        "",
        f"### The {min(top_n, headline.n)} nodes where they disagree most",
        "",
    ]
    rows = []
    for i in headline.most_disagreeing(top_n):
        rows.append(
            {
                "node": headline.nodes[i],
                "Jaccard": f"{headline.jaccard[i]:.3f}",
                f"{headline.pin_a} neighbours": ", ".join(headline.nodes[j] for j in headline.neighbours_a[i][:neighbours_shown]),
                f"{headline.pin_b} neighbours": ", ".join(headline.nodes[j] for j in headline.neighbours_b[i][:neighbours_shown]),
            }
        )
    lines.append(markdown_table(rows, list(rows[0]) if rows else ["node"]))
    return "\n".join(lines)


def _verdict_note(step: TopologyStep, keep: int) -> str:
    if step.position == 1:
        return " (first pin: builds the graph)"
    if step.position <= keep and step.verdict == STOP:
        return " (kept: minimum ensemble)"
    return ""


def topology_markdown(
    steps: Sequence[TopologyStep],
    *,
    scope: str,
    method: str,
    threshold: float,
    k: int,
    nodes: int,
    models: Mapping[str, str],
    atlas_run_id: str,
    keep: int,
    plot: str,
) -> str:
    """The report for one scope: the stop condition, the method, a row per pin and the result."""
    interval = steps[0].change
    stop = first_stop(steps, keep)
    rows = [
        {
            "#": s.position,
            "pin": s.pin_key,
            "model": models.get(s.pin_key, ""),
            "mean change": f"{s.change.mean:.3f}",
            f"{interval.confidence:.0%} interval": _interval(s.change) + (" (straddles threshold)" if s.uncertain else ""),
            "verdict": s.verdict + _verdict_note(s, keep),
        }
        for s in steps
    ]
    if len(steps) < 2:
        result = (
            "Only one pin is in the ensemble: nothing to compare. Add a second instrument "
            f"(seed: \"{SEED_ENSEMBLE}\")."
        )
    elif stop is None:
        result = (
            "Every pin after the minimum ensemble changes the atlas: the stop condition is not "
            "reached; keep adding models."
        )
    else:
        kept = ", ".join(f"`{s.pin_key}`" for s in steps[: stop.position - 1])
        result = (
            f"**Stop before `{stop.pin_key}`** (position {stop.position}): it changes the consensus graph by "
            f"{stop.change.mean:.3f} < {threshold:g}. The ensemble is {kept}."
        )
    return "\n".join(
        [
            f"# Topology report ({scope} scope)",
            "",
            f"Stop condition (seed: \"{SEED_STOP_RULE}\"): pins are added in the configured order; a pin "
            f"whose mean change of the consensus neighbourhood graph is below the threshold **{threshold:g}** "
            f"is \"below threshold: stop\". The first {keep} pin(s) are the minimum ensemble (seed: "
            f"\"{SEED_ENSEMBLE}\") and stay whatever their verdict; the ensemble ends before the first "
            "later pin below the threshold.",
            "",
            f"Method **{method}**: {METHODS[method]}.",
            "",
            f"Corpus: {nodes} {scope} nodes that every pin has vectors for, k = {k}, atlas run `{atlas_run_id}`. "
            f"Interval: {interval.confidence:.0%} percentile bootstrap over plates, {interval.samples} samples.",
            "",
            markdown_table(rows, list(rows[0])),
            "",
            result,
            "",
            plot,
        ]
    )
