"""Box records (seed 6): one row per detected box and plate × detector pin, what a plate's boxes
say together (counts per label, spatial relations), and the contract checks over them.

A box row, after :data:`RECORD_FIELDS` (scope ``segment``, region ``box:<label id>:<XYWH>``):
``box_index`` (0 = best score), ``label`` (class name, or the prompt phrase it matched),
``label_id``, ``score`` in [0, 1], ``score_threshold`` (the run's, also in the preprocess tag),
``bbox`` (XYWH, float plate pixels, clipped to the plate), ``bbox_norm`` (XYWH as fractions of the
plate's width and height), ``plate_size`` ([height, width]), ``clipped`` (the model's box reached
outside the plate), and ``prompt_id`` / ``prompt_sha256`` (text-conditioned detectors; null for
closed-vocabulary ones). A plate with no box above the threshold has no rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.records import RECORD_FIELDS, record_fields
from awb_dagster.provenance.store import SealedPair

NORM_TOLERANCE = 1e-6  # bbox_norm against bbox / plate size
INSIDE_FRACTION = 0.9  # a box is "inside" another when this much of its area lies in it
RELATION_BOXES = 8  # relations are listed between the best-scoring boxes only (8 boxes: 28 pairs)

BOXES_INSIDE_PLATE = "boxes_inside_plate"
BOX_SCORES_IN_RANGE = "box_scores_in_range"
BOX_CHECK_DESCRIPTIONS = {
    BOXES_INSIDE_PLATE: "Every box lies inside its plate (0 <= x, y; x + w <= width; y + h <= height; w, h >= 0, "
    f"catalog size), and `bbox_norm` is `bbox` over the plate size within {NORM_TOLERANCE}.",
    BOX_SCORES_IN_RANGE: "Every box score is finite, in [0, 1] and at least the run's `score_threshold`.",
}
BOX_PROMPT_MATCHES_REGISTRY = "box_prompt_matches_registry"
PROMPT_CHECK_DESCRIPTION = (
    "Every box names a prompt of the prompt registry (`prompt_id`) and its `prompt_sha256` is the sha256 the "
    "registry computes for one of that prompt's versions (a changed template is another prompt)."
)


def box_schema() -> pa.Schema:
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("box_index", pa.int32()),
            ("label", pa.string()),
            ("label_id", pa.int32()),
            ("score", pa.float32()),
            ("score_threshold", pa.float32()),
            ("bbox", pa.list_(pa.float64(), 4)),  # XYWH, plate pixels
            ("bbox_norm", pa.list_(pa.float64(), 4)),  # XYWH / (width, height, width, height)
            ("plate_size", pa.list_(pa.int32(), 2)),  # [height, width]
            ("clipped", pa.bool_()),
            ("prompt_id", pa.string()),
            ("prompt_sha256", pa.string()),
        ]
    )


def box_rows(boxes: Sequence[Any], *, width: int, height: int, score_threshold: float,
             prompt: tuple[str, str] | None = None, **fields: str) -> list[dict[str, Any]]:  # fmt: skip
    """Records of ``boxes`` (each with ``xywh``, ``score``, ``label``, ``label_id``, ``clipped``) of
    one plate; ``fields`` are :func:`record_fields`' arguments but scope and region; ``prompt`` is
    (prompt id, sha256) for text-conditioned detectors. Identical boxes keep the first."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for box in boxes:
        x, y, w, h = box.xywh
        region = f"box:{box.label_id}:{x:.3f},{y:.3f},{w:.3f},{h:.3f}"
        if region in seen:
            continue
        seen.add(region)
        rows.append(
            {
                **record_fields(**fields, scope="segment", region=region),
                "scope": "segment",
                "box_index": len(rows),
                "label": box.label,
                "label_id": box.label_id,
                "score": box.score,
                "score_threshold": score_threshold,
                "bbox": [x, y, w, h],
                "bbox_norm": [x / width, y / height, w / width, h / height],
                "plate_size": [height, width],
                "clipped": box.clipped,
                "prompt_id": prompt[0] if prompt else None,
                "prompt_sha256": prompt[1] if prompt else None,
            }
        )
    return rows


def box_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A box artifact (possibly empty: a plate where no box passed the threshold)."""
    return pa.Table.from_pylist(rows, schema=box_schema())


def relation(a: Sequence[float], b: Sequence[float]) -> list[str]:
    """How box ``a`` (XYWH) lies relative to box ``b``: ``inside`` when at least
    :data:`INSIDE_FRACTION` of ``a``'s area is in ``b``; else any of ``above``, ``below``,
    ``left``, ``right`` that hold with no overlap on that axis; ``overlaps`` when none does."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    overlap_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    overlap_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    if aw * ah > 0 and overlap_w * overlap_h >= INSIDE_FRACTION * aw * ah:
        return ["inside"]
    found = [name for name, holds in (("above", ay + ah <= by), ("below", ay >= by + bh),
                                      ("left", ax + aw <= bx), ("right", ax >= bx + bw)) if holds]  # fmt: skip
    return found or ["overlaps"]


def box_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What one plate's boxes say together: the count per label and the relations between its
    :data:`RELATION_BOXES` best boxes, each pair once (subject = the better-scoring box), boxes
    named ``<label>#<box_index>``."""
    ordered = sorted(rows, key=lambda row: row["box_index"])
    counts = dict(sorted(Counter(row["label"] for row in ordered).items()))
    best = ordered[:RELATION_BOXES]
    relations = []
    for i, subject in enumerate(best):
        for other in best[i + 1 :]:
            for name in relation(subject["bbox"], other["bbox"]):
                relations.append({"subject": f"{subject['label']}#{subject['box_index']}", "relation": name,
                                  "object": f"{other['label']}#{other['box_index']}"})  # fmt: skip
    return {"box_count": len(ordered), "counts": counts, "relations": relations}


def read_box_rows(pair: SealedPair) -> list[dict[str, Any]]:
    """The box rows of one sealed pair."""
    if not pair.record_ids:
        return []
    return pq.read_table(pair.artifact_path, filters=[("record_id", "in", list(pair.record_ids))]).to_pylist()


def check_box_pairs(pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]) -> dict[str, CheckOutcome]:
    """The box contract over ``pairs``; ``plate_sizes`` maps plate sha256 -> (height, width)."""
    outcomes = {name: CheckOutcome(name) for name in BOX_CHECK_DESCRIPTIONS}
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        for outcome in outcomes.values():
            outcome.checked += len(pair.record_ids)

        def fail(check: str, record: str, detail: str) -> None:
            outcomes[check].failures.append(Failure(name, detail, record, pair.plate_id))

        try:
            rows = read_box_rows(pair)
        except (OSError, pa.ArrowException) as exc:
            for record in pair.record_ids:
                for check in outcomes:
                    fail(check, record, f"artifact cannot be read ({type(exc).__name__}: {exc})")
            continue
        height, width = plate_sizes[pair.plate_sha256]
        for row in rows:
            record = row["record_id"]
            x, y, w, h = row["bbox"]
            if not (0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width and y + h <= height):
                fail(BOXES_INSIDE_PLATE, record, f"box XYWH {row['bbox']} outside the {width}x{height} plate")
            elif row["plate_size"] != [height, width]:
                fail(BOXES_INSIDE_PLATE, record, f"plate_size {row['plate_size']}, the catalog's is {[height, width]}")
            else:
                expected = (x / width, y / height, w / width, h / height)
                if any(abs(a - b) > NORM_TOLERANCE for a, b in zip(row["bbox_norm"], expected)):
                    fail(BOXES_INSIDE_PLATE, record, f"bbox_norm {row['bbox_norm']} is not bbox / plate size")
            score, threshold = row["score"], row["score_threshold"]
            if score is None or not math.isfinite(score) or not 0.0 <= score <= 1.0:
                fail(BOX_SCORES_IN_RANGE, record, f"score {score} outside [0, 1]")
            elif score < threshold - 1e-6:
                fail(BOX_SCORES_IN_RANGE, record, f"score {score} below the run's threshold {threshold}")
    return outcomes


def check_box_prompts(pairs: Sequence[SealedPair], registry_shas: Mapping[str, set[str]]) -> CheckOutcome:
    """Every box's prompt is in the registry with that sha256; ``registry_shas`` maps each prompt
    id to the sha256 of its versions."""
    outcome = CheckOutcome(BOX_PROMPT_MATCHES_REGISTRY)
    for pair in pairs:
        outcome.checked += len(pair.record_ids)
        for row in read_box_rows(pair):
            prompt_id, sha = row["prompt_id"], row["prompt_sha256"]
            if prompt_id not in registry_shas:
                detail = f"prompt {prompt_id!r} is not in the prompt registry"
            elif sha not in registry_shas[prompt_id]:
                detail = f"prompt {prompt_id} sha256 {sha} matches none of the registry's versions"
            else:
                continue
            outcome.failures.append(Failure(f"{pair.run_id}/{pair.artifact}", detail, row["record_id"], pair.plate_id))
    return outcome
