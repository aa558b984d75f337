"""`awb demo`'s text -> boxes -> masks -> embeddings step: one GroundingDINO prompt of the prompt
registry gives boxes (``grounding_dino_detections``), the boxes prompt the demo SAM
(``box_masks``), the masks are embedded by the demo CLIP (``segment_embeddings`` under
``<clip pin>~<detector pin>~<sam pin>``), and one such segment embedding's lineage is printed back
to the prompt, the detector pin and the plate. One plate (the chain, not a corpus, is the point;
the step stays within a few seconds). Random weights: the boxes and their phrases mean nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

from awb_dagster.provenance.records import box_mask_pin_key, segment_pin_key

DEMO_PROMPT = "grounding.bird"  # the grounding producer's default prompt
DEMO_SEGMENT_CONFIG = {"min_region_area": 16}
DEMO_PLATE = "audubon_p001_wild-turkey"  # a bird plate of the sample plates; else the first plate registered
RELATION_ROWS = 3


def _demo_pin(registry, family: str) -> str | None:
    pins = [e.active_pin.key for e in registry.family(family) if e.instrument.demo and e.active_pin is not None]
    return pins[0] if pins else None


def box_chain_summary(defs, instance, registry, store, plate_ids, say: Callable[[str], None]) -> bool:
    """Run the chain on one of ``plate_ids``; print its boxes, masks and one segment's lineage. False
    on a failed run; True (saying why) when a demo pin is missing or no box passed."""
    from awb_dagster.assets.factory import job_name
    from awb_dagster.provenance.boxes import box_summary, read_box_rows
    from awb_dagster.provenance.lineage import lineage
    from awb_dagster.provenance.report import format_lineage
    from awb_dagster.registry.prompts import PromptRegistry
    from awb_dagster.runner import materialize_pin_ranges

    detector, sam, clip = (_demo_pin(registry, family) for family in ("grounding-dino", "sam", "clip"))
    if not (detector and sam and clip and plate_ids):
        say("\ntext -> boxes -> masks -> embeddings: skipped (no demo GroundingDINO, SAM or CLIP pin, or no plate)")
        return True
    plate = DEMO_PLATE if DEMO_PLATE in plate_ids else plate_ids[0]
    box_key = box_mask_pin_key(detector, sam)
    segment_key = segment_pin_key(clip, box_key)
    started = time.perf_counter()
    steps = (
        ("grounding_dino_detections", detector, {"prompt_id": DEMO_PROMPT}),
        ("box_masks", box_key, {}),
        ("segment_embeddings", segment_key, DEMO_SEGMENT_CONFIG),
    )
    for asset, key, config in steps:
        runs = materialize_pin_ranges(defs, instance, job_name(asset), asset, config, key, [plate])
        if not all(run.success for run in runs):
            say(f"FAILED: {asset} {key}; see the Dagster run {runs[-1].dagster_run_id}")
            return False
    prompt = PromptRegistry.load().get(DEMO_PROMPT)
    say(f"\ntext -> boxes -> masks -> embeddings ({time.perf_counter() - started:.1f} s): prompt {prompt.id} "
        f"{prompt.template!r} -> {detector} -> {sam} -> {clip}")  # fmt: skip
    boxes, masks, segments = (
        max((p for p in store.sealed_pairs(key).values() if p.plate_id == plate), key=lambda p: p.run_id)
        for key in (detector, box_key, segment_key)
    )
    summary = box_summary(read_box_rows(boxes))
    say(f"  {plate}: {summary['box_count']} boxes ({len(summary['counts'])} phrases), {len(masks.record_ids)} masks, "
        f"{len(segments.record_ids)} segment embeddings; {len(summary['relations'])} box relations, e.g.:")  # fmt: skip
    for row in summary["relations"][:RELATION_ROWS]:
        say(f"    {row['subject']} {row['relation']} {row['object']}")
    if not segments.record_ids:
        say("  no box passed the threshold on this plate: no lineage to show")
        return True
    record = segments.record_ids[0]
    say(f"\nlineage of a prompted region's embedding (awb lineage {record}):")
    say(format_lineage(lineage(store, record)))
    return True
