"""The foreground record (seed 5.4 under the mask contract of 8.2) and its agreement with SAM.

One record per plate × U^2-Net pin (:func:`foreground_schema`):

- ``rle_counts`` / ``rle_size`` / ``mask_sha256``: the foreground mask as in the SAM mask record
  (COCO RLE by pycocotools at plate resolution; sha256 of the decoded C-order uint8 0/1 bytes).
- ``bbox`` (XYWH), ``area``, ``centroid`` (x, y), ``bbox_area_fraction``, ``bbox_fill``,
  ``fragmentation`` (8-connected components); ``bbox``, ``centroid`` and ``bbox_fill`` are null
  for an empty mask.
- ``foreground_fraction`` = area / plate pixels (transparent pixels count as plate, never as
  foreground).
- ``saliency_path`` / ``saliency_sha256``: the 8-bit saliency map (lossless PNG at plate
  resolution, relative to the run directory) the mask was thresholded from; ``threshold``;
  ``d0_min`` / ``d0_max``: the raw fused output's range before carvekit's min-max normalization.
- Agreement with SAM (a sanity axis, never a verdict): ``sam_pin`` (the SAM pin asked, null when
  none was), ``sam_run_id`` / ``sam_artifact`` / ``sam_artifact_sha256`` (the sealed SAM mask set
  compared, null when the plate had none), ``sam_mask_count``, ``sam_union_fraction`` (the union
  of its masks over the plate), ``sam_union_iou`` = |foreground ∩ union| / |foreground ∪ union|
  (null when there was no set, or both are empty).
- ``record_id``: scope ``plate``, region ``foreground``.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.checks import CheckOutcome, Failure
from awb_dagster.provenance.masksets import MaskSet
from awb_dagster.provenance.records import RECORD_FIELDS, record_fields
from awb_dagster.provenance.rows import count_components, mask_sha256
from awb_dagster.provenance.store import SealedPair

FOREGROUND_REGION = "foreground"
FOREGROUND_CONSISTENT = "foreground_consistent"
FOREGROUND_CHECK_DESCRIPTIONS = {
    FOREGROUND_CONSISTENT: "Every foreground record's artifact lists exactly the record ids its manifest names; "
    "its saliency PNG hashes to `saliency_sha256` and decodes to the plate's height × width; the record's mask "
    "(its RLE) is the thresholded map less `alpha_excluded` pixels, and its area, bbox and `foreground_fraction` "
    "are the mask's; "
    "`sam_union_iou` is null or in [0, 1].",
}


def foreground_schema() -> pa.Schema:
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("rle_counts", pa.string()),
            ("rle_size", pa.list_(pa.int32(), 2)),  # [height, width]
            ("mask_sha256", pa.string()),
            ("bbox", pa.list_(pa.int32(), 4)),
            ("area", pa.int64()),
            ("centroid", pa.list_(pa.float64(), 2)),
            ("foreground_fraction", pa.float64()),
            ("bbox_area_fraction", pa.float64()),
            ("bbox_fill", pa.float64()),
            ("fragmentation", pa.int32()),
            ("threshold", pa.int32()),
            ("alpha_excluded", pa.int64()),
            ("d0_min", pa.float64()),
            ("d0_max", pa.float64()),
            ("saliency_path", pa.string()),
            ("saliency_sha256", pa.string()),
            ("sam_pin", pa.string()),
            ("sam_run_id", pa.string()),
            ("sam_artifact", pa.string()),
            ("sam_artifact_sha256", pa.string()),
            ("sam_mask_count", pa.int32()),
            ("sam_union_fraction", pa.float64()),
            ("sam_union_iou", pa.float64()),
        ]
    )


def saliency_png(saliency: np.ndarray) -> bytes:
    """The saliency map (uint8 [height, width]) as lossless ``L`` PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(saliency, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class SamAgreement:
    """The foreground mask against the union of one sealed SAM mask set."""

    sam_pin: str
    mask_set: MaskSet | None  # None: the plate has no sealed set under the pin

    def fields(self, foreground: np.ndarray) -> dict[str, Any]:
        if self.mask_set is None:
            return {"sam_pin": self.sam_pin}
        union = sam_union(self.mask_set.rows, foreground.shape)
        both, either = int(np.count_nonzero(foreground & union)), int(np.count_nonzero(foreground | union))
        pair = self.mask_set.pair
        return {
            "sam_pin": self.sam_pin, "sam_run_id": pair.run_id, "sam_artifact": pair.artifact,
            "sam_artifact_sha256": pair.artifact_sha256, "sam_mask_count": len(self.mask_set.rows),
            "sam_union_fraction": int(union.sum()) / union.size, "sam_union_iou": both / either if either else None,
        }  # fmt: skip


def sam_union(rows: Sequence[Mapping[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """The union (bool [height, width]) of SAM mask rows; a mask of another size is an error."""
    from pycocotools import mask as mask_utils

    union = np.zeros(shape, dtype=bool)
    for row in rows:
        if tuple(row["rle_size"]) != shape:
            raise ValueError(f"SAM mask {row['record_id']} is {tuple(row['rle_size'])} (height, width), the plate {shape}")
        union |= mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")}).astype(bool)
    return union


def foreground_row(
    mask: np.ndarray, *, alpha_excluded: int, saliency_sha256: str, saliency_path: str, threshold: int, d0_range: tuple[float, float],
    agreement: SamAgreement | None, **identity: str,
) -> dict[str, Any]:
    """The record of one plate's foreground ``mask`` (``identity``: :func:`record_fields` arguments but scope)."""
    from pycocotools import mask as mask_utils

    height, width = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    area = int(mask_utils.area(rle))
    plate_area = height * width
    bbox = centroid = fill = None
    bbox_fraction = 0.0
    if area:
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        ys, xs = np.nonzero(mask)
        bbox, centroid, fill, bbox_fraction = [x, y, w, h], [float(xs.mean()), float(ys.mean())], area / (w * h), w * h / plate_area
    return {
        **record_fields(**identity, scope="plate", region=FOREGROUND_REGION),
        "scope": "plate", "rle_counts": rle["counts"].decode("ascii"), "rle_size": [height, width],
        "mask_sha256": mask_sha256(mask), "bbox": bbox, "area": area, "centroid": centroid,
        "foreground_fraction": area / plate_area, "bbox_area_fraction": bbox_fraction, "bbox_fill": fill,
        "fragmentation": count_components(mask), "threshold": threshold,
        "alpha_excluded": alpha_excluded, "d0_min": d0_range[0], "d0_max": d0_range[1],
        "saliency_path": saliency_path, "saliency_sha256": saliency_sha256,
        **(agreement.fields(mask) if agreement is not None else {}),
    }  # fmt: skip


def foreground_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=foreground_schema())


def check_foreground_pairs(pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]) -> dict[str, CheckOutcome]:
    """Check each record against its saliency PNG; ``plate_sizes`` maps plate sha256 -> (height, width)."""
    outcome = CheckOutcome(FOREGROUND_CONSISTENT)
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        outcome.checked += len(pair.record_ids)

        def fail(detail: str, record: str = "", pair: SealedPair = pair, name: str = name) -> None:
            outcome.failures.append(Failure(name, detail, record, pair.plate_id))

        try:
            rows = pq.read_table(pair.artifact_path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            fail(f"artifact cannot be read ({type(exc).__name__}: {exc})")
            continue
        if Counter(r["record_id"] for r in rows) != Counter(pair.record_ids):
            fail(f"record ids differ: {len(rows)} in the artifact, {len(pair.record_ids)} in the manifest")
        for row in rows:
            problem = _row_problem(pair, row, plate_sizes.get(pair.plate_sha256))
            if problem:
                fail(problem, row["record_id"])
    return {outcome.name: outcome}


def _row_problem(pair: SealedPair, row: dict[str, Any], size: tuple[int, int] | None) -> str:
    from pycocotools import mask as mask_utils

    path = pair.artifact_path.parent / row["saliency_path"]
    try:
        digest = sha256_file(path)
        with Image.open(path) as image:
            saliency = np.asarray(image.convert("L"))
        mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")}).astype(bool)
    except Exception as exc:  # pycocotools raises bare Exceptions and TypeErrors on bad input
        return f"{row['saliency_path']} or the RLE cannot be read ({type(exc).__name__}: {exc})"
    if digest != row["saliency_sha256"]:
        return f"{row['saliency_path']} has sha256 {digest[:12]}, the record names {row['saliency_sha256'][:12]}"
    if size is None or saliency.shape != size or mask.shape != size:
        return f"saliency {saliency.shape} and mask {mask.shape} (height, width), the plate is {size}"
    thresholded = saliency >= row["threshold"]
    area = int(mask.sum())
    if (mask & ~thresholded).any() or int(thresholded.sum()) - area != row["alpha_excluded"]:
        return f"the mask ({area} pixels) is not the thresholded map ({int(thresholded.sum())}) less alpha_excluded ({row['alpha_excluded']})"
    if area != row["area"] or abs(row["foreground_fraction"] - area / mask.size) > 1e-12:
        return f"area {row['area']} / foreground_fraction {row['foreground_fraction']!r}: the mask has {area} of {mask.size} pixels"
    if area:
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        if row["bbox"] != bbox:
            return f"bbox {row['bbox']} is not the mask's {bbox}"
    iou = row["sam_union_iou"]
    if iou is not None and not 0.0 <= iou <= 1.0:
        return f"sam_union_iou {iou!r} is outside [0, 1]"
    return ""
