"""`awb demo`'s foreground prior (seed 5.4): the tiny U^2-Net through Dagster, compared with the demo
SAM pin's sealed masks; one row per plate (foreground fraction, IoU with the SAM union)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow.parquet as pq

from awb_dagster.constants import FOREGROUND_FAMILIES
from awb_dagster.provenance.report import text_table


def foreground_summary(defs, instance, registry, store, say: Callable[[str], None]) -> bool:
    """Materialize ``foreground_masks`` for each demo U^2-Net pin against the demo SAM pin; print the rows."""
    from awb_dagster.assets.factory import job_name
    from awb_dagster.producers.foreground import FOREGROUND_ASSET
    from awb_dagster.runner import materialize_pin_ranges

    sam = [e.active_pin.key for e in registry.family("sam") if e.instrument.demo and e.active_pin is not None]
    config = {"sam_pin": sam[0]} if sam else {}
    for family in FOREGROUND_FAMILIES:
        for entry in registry.family(family):
            if not entry.instrument.demo or entry.active_pin is None:
                continue
            pin_key, started = entry.active_pin.key, time.perf_counter()
            runs = materialize_pin_ranges(defs, instance, job_name(FOREGROUND_ASSET), FOREGROUND_ASSET, config, pin_key, None)
            if not all(run.success for run in runs):
                say(f"FAILED: {FOREGROUND_ASSET} {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
                return False
            newest = {}
            for pair in sorted(store.sealed_pairs(pin_key).values(), key=lambda p: p.run_id):
                newest[pair.plate_id] = pair
            rows = []
            for plate_id, pair in sorted(newest.items()):
                (row,) = pq.read_table(pair.artifact_path).to_pylist()
                iou = row["sam_union_iou"]
                rows.append({"plate": plate_id, "foreground": f"{row['foreground_fraction']:.3f}",
                             "sam_union_iou": "-" if iou is None else f"{iou:.3f}", "components": row["fragmentation"]})  # fmt: skip
            against = f"against SAM pin {sam[0]}" if sam else "no SAM pin to compare with"
            say(f"\n{FOREGROUND_ASSET} {pin_key} ({time.perf_counter() - started:.1f} s, {against}; a prior, never semantics):")
            say(text_table(rows, ["plate", "foreground", "sam_union_iou", "components"]))
    return True
