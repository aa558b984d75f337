"""Record rows of the segmenters' outputs: SAM masks and semantic class areas.

The instruments return plain results (:class:`awb_dagster.instruments.amg.GeneratedMask`,
:class:`awb_dagster.instruments.semantic.ClassMap`); the rows, their ids and the fields derived
for the output contract are built here, beside the schemas they fill.

Mask record (one per mask, :func:`awb_dagster.provenance.records.mask_schema`):

- ``rle_counts`` / ``rle_size``: COCO RLE (pycocotools, compressed counts as ASCII) at the
  plate's resolution ``[height, width]``.
- ``mask_sha256``: sha256 of the decoded mask as C-order ``uint8`` 0/1 bytes, shape
  ``(height, width)`` (what ``pycocotools.mask.decode`` returns, made contiguous).
- ``bbox``: XYWH in plate pixels, ``area``: pixel count, ``centroid``: mean (x, y) pixel index.
- ``area_fraction`` = area / plate pixels, ``bbox_area_fraction`` = bbox area / plate pixels,
  ``bbox_fill`` = area / bbox area.
- ``predicted_iou``, ``stability_score``: SAM's quality fields at the working resolution.
- ``point_coords``: the prompt point (x, y) in plate pixels; ``crop_box``: XYWH in plate pixels.
- ``fragmentation``: 8-connected components of the mask at plate resolution.
- ``record_id``: scope ``segment``, region ``mask-sha256:<mask_sha256>``.

Class-area record (one per class present on a plate, field meanings in
:mod:`awb_dagster.instruments.semantic`): ``record_id`` of scope ``plate``, region
``class:<class_id>``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from awb_dagster.provenance.records import record_fields

if TYPE_CHECKING:
    from awb_dagster.instruments.amg import GeneratedMask
    from awb_dagster.instruments.semantic import ClassMap


def mask_sha256(mask: np.ndarray) -> str:
    """sha256 of a decoded mask as C-order uint8 0/1 bytes (see the module docstring)."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a 2-D boolean mask (union-find over row runs)."""
    mask = np.asarray(mask, dtype=bool)
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts, ends = np.argwhere(edges == 1), np.argwhere(edges == -1)  # both in row-major order
    if len(starts) == 0:
        return 0
    rows, begin, end = starts[:, 0], starts[:, 1], ends[:, 1]  # run = [begin, end) in row
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for row in range(1, mask.shape[0]):
        above = range(row_start[row - 1], row_start[row])
        here = range(row_start[row], row_start[row + 1])
        j = above.start
        for i in here:
            # 8-connectivity: runs touch when they overlap after widening by one pixel.
            while j < above.stop and end[j] < begin[i]:
                j += 1
            k = j
            while k < above.stop and begin[k] <= end[i]:
                a, b = find(i), find(k)
                if a != b:
                    parent[a] = b
                k += 1
    return len({find(i) for i in range(len(rows))})


def mask_rows(
    masks: list[GeneratedMask],
    *,
    plate_id: str,
    plate_sha256: str,
    model_id: str,
    model_sha: str,
    pin_key: str,
    preprocess_tag: str,
    run_id: str,
) -> list[dict[str, Any]]:
    """Records of ``masks`` (schema: :func:`awb_dagster.provenance.records.mask_schema`).

    Identical masks (possible only when NMS is disabled) would share a record id; the first,
    best-scoring one is kept.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for generated in masks:
        geometry = mask_geometry(generated.mask)
        digest = geometry["mask_sha256"]
        if digest in seen:
            continue
        seen.add(digest)
        rows.append(
            {
                **record_fields(
                    plate_id=plate_id, plate_sha256=plate_sha256, model_id=model_id, model_sha=model_sha,
                    pin_key=pin_key, preprocess_tag=preprocess_tag, run_id=run_id,
                    scope="segment", region=f"mask-sha256:{digest}",
                ),  # fmt: skip
                "mask_index": len(rows),
                **geometry,
                "predicted_iou": generated.predicted_iou,
                "stability_score": generated.stability_score,
                "point_coords": list(generated.point_coords),
                "crop_box": list(generated.crop_box),
                "fragmentation": count_components(generated.mask),
            }
        )
    return rows


def mask_geometry(mask: np.ndarray) -> dict[str, Any]:
    """The RLE, hash and geometry fields of one non-empty mask record (module docstring)."""
    from pycocotools import mask as mask_utils

    height, width = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    area = int(mask_utils.area(rle))
    ys, xs = np.nonzero(mask)
    plate_area = width * height
    return {
        "rle_counts": rle["counts"].decode("ascii"),
        "rle_size": [int(height), int(width)],
        "mask_sha256": mask_sha256(mask),
        "bbox": [x, y, w, h],
        "area": area,
        "centroid": [float(xs.mean()), float(ys.mean())],
        "area_fraction": area / plate_area,
        "bbox_area_fraction": (w * h) / plate_area,
        "bbox_fill": area / (w * h),
    }


def class_area_rows(
    class_map: ClassMap,
    *,
    plate_id: str,
    plate_sha256: str,
    model_id: str,
    model_sha: str,
    pin_key: str,
    preprocess_tag: str,
    run_id: str,
    class_map_path: str,
    class_map_sha256: str,
) -> list[dict[str, Any]]:
    """Records of ``class_map``, most pixels first (schema:
    :func:`awb_dagster.provenance.records.class_area_schema`)."""
    height, width = class_map.class_ids.shape
    plate_area = height * width
    return [
        {
            **record_fields(
                plate_id=plate_id, plate_sha256=plate_sha256, model_id=model_id, model_sha=model_sha,
                pin_key=pin_key, preprocess_tag=preprocess_tag, run_id=run_id,
                scope="plate", region=f"class:{class_id}",
            ),  # fmt: skip
            "scope": "plate",
            "class_id": class_id,
            "label": class_map.labels.get(class_id, f"unlabelled-{class_id}"),
            "pixel_count": count,
            "area_fraction": count / plate_area,
            "class_map_path": class_map_path,
            "class_map_sha256": class_map_sha256,
        }
        for class_id, count in class_map.pixel_counts().items()
    ]
