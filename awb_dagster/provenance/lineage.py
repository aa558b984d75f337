"""Lineage of one record: plate bytes -> pin -> preprocessing -> run -> artifact."""

from __future__ import annotations

from typing import Any

import polars as pl

from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.store import RunStore
from awb_dagster.provenance.verify import seal_problem


def lineage(store: RunStore, record_id: str) -> dict[str, Any]:
    """Everything needed to trace ``record_id`` back to the exact bytes and weights."""
    manifest, pair = store.find_record(record_id)
    row = (
        pl.scan_parquet(pair.artifact_path)
        .filter(pl.col("record_id") == record_id)
        .select(pl.exclude("vector", "vector_l2"))
        .collect()
    )
    if row.height != 1:
        raise ValueError(
            f"{pair.artifact_path}: expected one row for record {record_id}, found {row.height}"
        )
    record = row.row(0, named=True)
    plate = next(p for p in manifest.payload["plates"] if p["plate_id"] == pair.plate_id)
    # Region runs key their pairs by pin pair; the record names the pin that made it.
    pin_key = record.get("pin_key") or pair.pin_key
    instrument = next(i for i in manifest.payload["instruments"] if i["pin_key"] == pin_key)
    actual_sha = sha256_file(pair.artifact_path) if pair.artifact_path.is_file() else None
    # The artifact matching its manifest proves nothing if the manifest itself was rewritten.
    sealing = seal_problem(manifest, store.seal_log())
    return {
        "record_id": record_id,
        # Mask records (sam_masks) carry no scope column: each is one segment of its plate.
        "scope": record.get("scope", "segment" if "mask_sha256" in record else None),
        "region_ref": record.get("region_ref"),
        "vector_dim": record.get("vector_dim"),
        "score": record.get("score"),
        "mask": {k: record[k] for k in ("mask_sha256", "bbox", "area")} if "mask_sha256" in record else None,
        # Class-area records (semantic_segmentation): one class of one plate's class map.
        "class": {k: record[k] for k in ("class_id", "label", "pixel_count", "class_map_path", "class_map_sha256")}
        if "class_id" in record
        else None,
        # Box records (detr_detections, grounding_dino_detections): the box, its label and text prompt.
        "detection": _detection(record) if "box_index" in record and "mask_sha256" not in record else None,
        "plate": {
            "plate_id": pair.plate_id,
            "sha256": pair.plate_sha256,
            "path": plate["source_paths"][0],
            "source_paths": plate["source_paths"],
        },
        "model": {
            "model_id": instrument["model_id"],
            "sha": instrument["sha"],
            "pin_key": pin_key,
            "license": instrument["license"],
            "failure_modes": instrument["failure_modes"],
        },
        # A segment embedding's region is a mask record: its own lineage (mask -> SAM pin -> plate).
        "region": (
            lineage(store, record["region_ref"])
            if record.get("scope") == "segment" and record.get("region_ref")
            else None
        ),
        # A CLIP-fed probe's score names the embedding record it scored: its own lineage (embedding -> CLIP pin -> plate).
        "embedding": lineage(store, record["embedding_ref"]) if record.get("embedding_ref") else None,
        # A box-prompted mask names the box record that prompted it: its own lineage (box -> prompt -> detector pin -> plate).
        "box": lineage(store, record["box_ref"]) if record.get("box_ref") else None,
        "preprocess_tag": pair.preprocess_tag,
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id,
        "artifact": {
            "path": str(pair.artifact_path),
            "sha256": pair.artifact_sha256,
            "verified": actual_sha == pair.artifact_sha256 and sealing is None,
            "artifact_matches_manifest": actual_sha == pair.artifact_sha256,
            "manifest": "matches the seal log" if sealing is None else f"{sealing.kind}: {sealing.detail}",
        },
    }


def _detection(record: dict[str, Any]) -> dict[str, Any]:
    """A box record's box, label and prompt; the prompt's text from the prompt registry when one of
    its versions has that sha256 (None: the record's prompt is not in this registry)."""
    from awb_dagster.registry.prompts import PromptRegistry

    prompt = None
    if record.get("prompt_id"):
        registry = PromptRegistry.load()
        versions = [p for (pid, _), p in registry.prompts.items() if pid == record["prompt_id"] and p.sha256 == record["prompt_sha256"]]
        prompt = {
            "prompt_id": record["prompt_id"],
            "sha256": record["prompt_sha256"],
            "version": versions[0].version if versions else None,
            "text": versions[0].template if versions else None,
        }
    return {"label": record["label"], "score": record["score"], "bbox": record["bbox"], "prompt": prompt}
