"""`awb demo`'s probes (seed 7): the tiny classifier probe and the tiny CLIP-fed aesthetic MLP run
through Dagster; one row per plate. The ConvNet texture baseline runs with the embedding families."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow.parquet as pq

from awb_dagster.constants import PROBE_FAMILIES, SCORE_ASSETS, SCORE_FAMILIES
from awb_dagster.provenance.report import text_table


def _demo_pins(registry, families) -> list[tuple[str, str]]:
    return [
        (family, entry.active_pin.key)
        for family in families
        for entry in registry.family(family)
        if entry.instrument.demo and entry.active_pin is not None
    ]


def probe_summary(defs, instance, registry, store, say: Callable[[str], None]) -> str | None:
    """Materialize ``<family>_logits`` and ``aesthetic_scores`` for the demo pins; print each plate's
    top label and score. Returns one aesthetic score record id ("" when there is none), None on a
    failed run."""
    from awb_dagster.assets.factory import job_name
    from awb_dagster.runner import materialize_pin_ranges

    jobs = [(f"{family}_logits", pin) for family, pin in _demo_pins(registry, PROBE_FAMILIES)]
    jobs += [(SCORE_ASSETS[family], pin) for family, pin in _demo_pins(registry, SCORE_FAMILIES)]
    first_score = ""
    for asset, pin_key in jobs:
        started = time.perf_counter()
        runs = materialize_pin_ranges(defs, instance, job_name(asset), asset, {}, pin_key, None)
        if not all(run.success for run in runs):
            say(f"FAILED: {asset} {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
            return None
        pairs = sorted(store.sealed_pairs(pin_key).values(), key=lambda p: p.plate_id)
        rows = []
        for pair in pairs:
            record = pq.read_table(pair.artifact_path, filters=[("record_id", "=", pair.record_ids[0])]).to_pylist()[0]
            if asset == "aesthetic_scores":
                first_score = first_score or record["record_id"]
                rows.append({"plate": pair.plate_id, "score": f"{record['score']:.4f}", "embedding": record["embedding_ref"][:12]})
            elif "score" in record:  # read from the plate's pixels
                rows.append({"plate": pair.plate_id, "score": f"{record['score']:.4f}"})
            else:
                rows.append({"plate": pair.plate_id, "top_label": record["top_label"], "p": f"{record['top_probability']:.3f}"})
        say(f"\n{asset} {pin_key} ({time.perf_counter() - started:.1f} s; a measured axis, never a verdict):")
        say(text_table(rows, list(rows[0]) if rows else ["plate"]))
    return first_score


def probe_axes_summary(defs, instance, say: Callable[[str], None]) -> bool:
    """Materialize ``probe_axes`` (after the atlas and the probes); print its strongest correlations."""
    import dagster as dg

    from awb_dagster.runner import materialize_atlas

    result = materialize_atlas(defs, instance, assets=["probe_axes"])
    if not result.success:
        say(f"FAILED: probe_axes; see the Dagster run {result.run_id}")
        return False
    metadata = instance.get_latest_materialization_event(dg.AssetKey("probe_axes")).asset_materialization.metadata
    rows = sorted((row.data for row in metadata["correlations"].value.records),
                  key=lambda row: -abs(row["spearman_rho"] or 0.0))[:6]  # fmt: skip
    say(f"\nprobe axes (Spearman rho vs the atlas maps and the CLIP-vs-DINOv2 disagreement; run {metadata['run_id'].value}):")
    say(text_table(rows, ["probe_pin", "axis", "reference", "spearman_rho", "plates"]))
    return True
