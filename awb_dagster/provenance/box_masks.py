"""Box-prompted mask records (seed 6 → 5): the sealed box records of one detector pin, read as the
prompts of a SAM pin, and the masks they gave.

A box-mask record has every field of a ``sam_masks`` record (:func:`awb_dagster.provenance.records.mask_schema`:
RLE, ``mask_sha256``, geometry, ``predicted_iou``, ``stability_score``; ``point_coords`` null: the
prompt is a box; ``crop_box`` the whole plate) plus the box it came from: ``box_ref`` (the box
record id), ``box_pin`` (the detector pin), ``box_index``, ``label``, ``box_score``, ``box_xywh``
(the prompt, plate pixels) and ``prompt_id`` / ``prompt_sha256`` (GroundingDINO's text prompt;
null for closed-vocabulary detectors). ``record_id``: scope ``segment``, region ``box:<box_ref>``,
so a box gives one record even when two boxes give the same mask. A box whose mask is empty once
transparent pixels are removed has no record (the partition metadata counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.instruments.common import InstrumentError
from awb_dagster.plates.catalog import Plate
from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import mask_schema, record_fields
from awb_dagster.provenance.rows import count_components, mask_geometry
from awb_dagster.provenance.store import RunStore, SealedPair, verified_path

DETECTION_RUN_SUFFIX = "-detections"  # run kinds of detr_detections and grounding_dino_detections

BOX_REFS_RESOLVE = "box_refs_resolve"
BOX_REF_CHECK_DESCRIPTION = (
    "Every box mask names (`box_ref`) a box record of a sealed detection run of the same plate bytes by "
    "the detector pin it names (`box_pin`), and its `label`, `prompt_id` and `prompt_sha256` are that box's."
)


def box_mask_schema() -> pa.Schema:
    return pa.schema(
        [
            *mask_schema(),
            ("box_ref", pa.string()),
            ("box_pin", pa.string()),
            ("box_index", pa.int32()),
            ("label", pa.string()),
            ("box_score", pa.float32()),
            ("box_xywh", pa.list_(pa.float64(), 4)),  # the prompt, plate pixels
            ("prompt_id", pa.string()),
            ("prompt_sha256", pa.string()),
        ]
    )


def box_mask_rows(masks: Sequence[Any], boxes: Sequence[Mapping[str, Any]], *, detector_pin: str,
                  **fields: str) -> list[dict[str, Any]]:  # fmt: skip
    """Records of ``masks`` (each with ``mask``, ``predicted_iou``, ``stability_score``), one per box
    row of ``boxes`` in the same order; ``fields``: :func:`record_fields`' arguments but scope and region."""
    if len(masks) != len(boxes):
        raise ValueError(f"{len(masks)} masks for {len(boxes)} boxes")
    rows = []
    for prompted, box in zip(masks, boxes):
        if not prompted.mask.any():
            continue
        height, width = prompted.mask.shape
        rows.append(
            {
                **record_fields(**fields, scope="segment", region=f"box:{box['record_id']}"),
                "mask_index": len(rows),
                **mask_geometry(prompted.mask),
                "predicted_iou": prompted.predicted_iou,
                "stability_score": prompted.stability_score,
                "point_coords": None,
                "crop_box": [0, 0, int(width), int(height)],
                "fragmentation": count_components(prompted.mask),
                "box_ref": box["record_id"],
                "box_pin": detector_pin,
                "box_index": box["box_index"],
                "label": box["label"],
                "box_score": box["score"],
                "box_xywh": list(box["bbox"]),
                "prompt_id": box["prompt_id"],
                "prompt_sha256": box["prompt_sha256"],
            }
        )
    return rows


def box_mask_table(rows: list[dict]) -> pa.Table:
    """A box-mask artifact (possibly empty: no box, or every mask empty)."""
    return pa.Table.from_pylist(rows, schema=box_mask_schema())


def xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


@dataclass(frozen=True)
class BoxSet:
    """The sealed boxes of one plate under one detector pin and tag, best score first."""

    pair: SealedPair
    rows: list[dict[str, Any]]


class BoxSets:
    """The sealed box records of ``detector_pin`` (made by ``detector_asset``), indexed once per
    step; ``box_tag`` chooses the set (empty: each plate's newest sealed set under the pin)."""

    def __init__(self, store: RunStore, detector_pin: str, detector_asset: str, box_tag: str):
        self.store, self.detector_pin, self.detector_asset, self.box_tag = store, detector_pin, detector_asset, box_tag
        self._pairs: dict[tuple[str, str], list[SealedPair]] = {}
        for (plate_id, sha, tag), pair in store.sealed_pairs(detector_pin).items():
            if not box_tag or tag == box_tag:
                self._pairs.setdefault((plate_id, sha), []).append(pair)

    def pair(self, plate: Plate) -> SealedPair:
        """The box set that prompts the plate's masks (no file is read)."""
        pairs = self._pairs.get((plate.plate_id, plate.sha256))
        if not pairs:
            which = f" under preprocess tag {self.box_tag!r}" if self.box_tag else ""
            raise InstrumentError(
                f"no sealed {self.detector_asset} box records for plate {plate.plate_id} (sha256 {plate.sha256[:12]}) "
                f"and detector pin {self.detector_pin}{which}: materialize {self.detector_asset} for partition "
                f"{self.detector_pin}|{plate.plate_id} first (its job {self.detector_asset}_job, or the asset in the UI)"
            )
        return max(pairs, key=lambda p: p.run_id)  # run ids start with their UTC start time

    def load(self, plate: Plate) -> BoxSet:
        pair = self.pair(plate)
        if not pair.record_ids:
            return BoxSet(pair, [])
        path = verified_path(self.store, pair.run_id, pair.artifact, pair.artifact_sha256)
        rows = pq.read_table(path, filters=[("record_id", "in", list(pair.record_ids))]).to_pylist()
        return BoxSet(pair, sorted(rows, key=lambda row: row["box_index"]))


def check_box_refs(store: RunStore, pairs: Sequence[SealedPair]) -> dict[str, CheckOutcome]:
    """Every box mask of ``pairs`` points at a sealed box record of its plate and detector pin."""
    outcome = CheckOutcome(BOX_REFS_RESOLVE)
    boxes: dict[str, tuple[str, str, SealedPair]] = {}  # box record id -> (plate sha256, pin, pair)
    for manifest in store.manifests():
        if str(manifest.payload.get("kind", "")).endswith(DETECTION_RUN_SUFFIX):
            for pair in manifest.pairs:
                sealed = manifest.sealed_pair(pair)
                boxes.update(dict.fromkeys(pair["record_ids"], (pair["plate_sha256"], pair["pin_key"], sealed)))
    box_rows: dict[tuple[str, str], dict[str, dict]] = {}  # box artifact -> its rows by record id
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        columns = ["record_id", "box_ref", "box_pin", "label", "prompt_id", "prompt_sha256"]
        try:
            rows = pq.read_table(pair.artifact_path, columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            outcome.failures.append(Failure(name, f"artifact cannot be read ({type(exc).__name__}: {exc})", "", pair.plate_id))
            continue
        outcome.checked += len(rows)
        for row in rows:
            ref = row["box_ref"]
            if ref not in boxes:
                detail = f"box_ref {ref!r} is no box record of any sealed detection run"
            elif boxes[ref][:2] != (pair.plate_sha256, row["box_pin"]):
                sha, pin, _ = boxes[ref]
                detail = f"box {ref} is of plate bytes {sha[:12]} by {pin}, not {pair.plate_sha256[:12]} by {row['box_pin']}"
            else:
                box_pair = boxes[ref][2]
                key = (box_pair.run_id, box_pair.artifact)
                if key not in box_rows:
                    try:
                        box_rows[key] = {r["record_id"]: r for r in pq.read_table(box_pair.artifact_path).to_pylist()}
                    except (OSError, pa.ArrowException):
                        box_rows[key] = {}
                box = box_rows[key].get(ref)
                fields = ("label", "prompt_id", "prompt_sha256")
                if box is None:
                    detail = f"box {ref} cannot be read from its sealed artifact {box_pair.artifact_path}"
                elif all(box[f] == row[f] for f in fields):
                    continue
                else:
                    detail = f"label/prompt {[row[f] for f in fields]} differ from box {ref}'s {[box[f] for f in fields]}"
            outcome.failures.append(Failure(name, detail, row["record_id"], pair.plate_id))
    return {outcome.name: outcome}
