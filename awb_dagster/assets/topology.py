"""``topology_report``: the seed's stop rule over ``atlas``'s latest run. Pins are added in the
configured order; the change each makes to the consensus kNN graph, with a bootstrap interval
over plates, gives each pin a verdict ("changes the atlas" / "below threshold: stop")."""

from dataclasses import dataclass
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
    models_of,
    open_corpus_run,
)
from awb_dagster.atlas.analysis import topology_changes
from awb_dagster.atlas.plots import markdown_image, topology_png
from awb_dagster.atlas.report import topology_markdown
from awb_dagster.atlas.topology import METHODS, TopologyStep, evaluate_order, first_stop
from awb_dagster.constants import GROUP_ATLAS
from awb_dagster.resources import AwbHome


class TopologyConfig(dg.Config):
    order: list[str] = []  # pin keys or instrument ids/keys; empty: CLIP, then DINOv2, then SigLIP pins
    method: str = "consensus"  # or "union" (see awb_dagster.atlas.topology.METHODS)
    threshold: float = 0.1  # mean share of consensus neighbours a pin must change to count
    minimum_ensemble: int = 2  # the first pins of the order, kept whatever their verdict (seed: CLIP + DINOv2)
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0



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
    models = models_of(run)
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

    out = open_corpus_run(store, "topology-report", context, config)
    add_atlas_inputs(out, run, {step.pin_key for result in results for step in result.steps})
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
            "verdicts": metadata_table(verdicts),
            "stop_before": dg.MetadataValue.json(stops),
            "method": config.method,
            "method_description": METHODS[config.method],
            "threshold": config.threshold,
            "bootstrap": f"{config.confidence:.0%} percentile interval over plates, {config.bootstrap_samples} samples, seed {config.seed}",
        }
    )

