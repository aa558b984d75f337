"""Record ids and the Arrow schemas of the output contracts (DESIGN.md section 4)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

SCOPES = ("plate", "segment", "tile")

# Region records are sealed under pair keys of their own, apart from the pin's plate records:
# segments under ``<embedding pin>~<sam pin>``, tiles under ``<embedding pin>~tiles``.
REGION_PAIR_SEPARATOR = "~"


def segment_pin_key(embedding_pin: str, sam_pin: str) -> str:
    return f"{embedding_pin}{REGION_PAIR_SEPARATOR}{sam_pin}"


def split_segment_pin_key(key: str) -> tuple[str, str]:
    """``<embedding pin>~<sam pin>`` -> (embedding pin, sam pin). The mask source may itself be a
    box-mask pair (``<embedding pin>~<detector pin>~<sam pin>``): its store key is the rest."""
    embedding_pin, separator, sam_pin = key.partition(REGION_PAIR_SEPARATOR)
    if not separator or not embedding_pin or not sam_pin:
        raise ValueError(f"segment pin key {key!r} is not '<embedding pin>{REGION_PAIR_SEPARATOR}<sam pin>'")
    return embedding_pin, sam_pin


def box_mask_pin_key(detector_pin: str, sam_pin: str) -> str:
    """The pins key of box-prompted masks (and their store key): ``<detector pin>~<sam pin>``."""
    return f"{detector_pin}{REGION_PAIR_SEPARATOR}{sam_pin}"


def split_box_mask_pin_key(key: str) -> tuple[str, str]:
    """``<detector pin>~<sam pin>`` -> (detector pin, sam pin)."""
    detector_pin, separator, sam_pin = key.partition(REGION_PAIR_SEPARATOR)
    if not separator or not detector_pin or not sam_pin or REGION_PAIR_SEPARATOR in sam_pin:
        raise ValueError(f"box mask pin key {key!r} is not '<detector pin>{REGION_PAIR_SEPARATOR}<sam pin>'")
    return detector_pin, sam_pin


def tile_pair_key(embedding_pin: str) -> str:
    """The store's pair key of tile records (kept apart from the pin's plate-scope pairs)."""
    return f"{embedding_pin}{REGION_PAIR_SEPARATOR}tiles"

_ID_SEPARATOR = "\x1f"  # cannot appear in a sha, tag or region ref, so fields never run together


def record_id(
    *, plate_sha256: str, model_sha: str, preprocess_tag: str, scope: str, region: str = ""
) -> str:
    """Deterministic id of one output record: the same inputs always give the same id."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    payload = _ID_SEPARATOR.join((plate_sha256, model_sha, preprocess_tag, scope, region))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def record_fields(
    *,
    plate_id: str,
    plate_sha256: str,
    model_id: str,
    model_sha: str,
    pin_key: str,
    preprocess_tag: str,
    run_id: str,
    scope: str,
    region: str = "",
) -> dict[str, str]:
    """The fields every record starts with (:data:`RECORD_FIELDS`), its id included."""
    return {
        "record_id": record_id(
            plate_sha256=plate_sha256, model_sha=model_sha, preprocess_tag=preprocess_tag, scope=scope, region=region
        ),
        "plate_id": plate_id,
        "plate_sha256": plate_sha256,
        "model_id": model_id,
        "model_sha": model_sha,
        "pin_key": pin_key,
        "preprocess_tag": preprocess_tag,
        "run_id": run_id,
    }


# Every record of every contract starts with these (DESIGN.md section 4).
RECORD_FIELDS: list[tuple[str, pa.DataType]] = [
    ("record_id", pa.string()),
    ("plate_id", pa.string()),
    ("plate_sha256", pa.string()),
    ("model_id", pa.string()),
    ("model_sha", pa.string()),
    ("pin_key", pa.string()),
    ("preprocess_tag", pa.string()),
    ("run_id", pa.string()),
]


def embedding_schema(dim: int) -> pa.Schema:
    """Schema of an embedding artifact: one row per (plate or region, pin)."""
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),
            ("region_ref", pa.string()),
            ("vector_dim", pa.int32()),
            ("vector", vector),
            ("vector_l2", vector),
        ]
    )


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization in float32; a zero vector stays zero rather than NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embedding_table(rows: list[dict], vectors: np.ndarray) -> pa.Table:
    """Build an embedding artifact table; the vector dim is asserted by the schema."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(rows) != vectors.shape[0]:
        raise ValueError(f"{len(rows)} rows but vectors of shape {vectors.shape}")
    dim = vectors.shape[1]
    schema = embedding_schema(dim)
    columns = {name: [row[name] for row in rows] for name in schema.names[:-3]}
    columns["vector_dim"] = [dim] * len(rows)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    flat_l2 = pa.array(l2_normalize(vectors).reshape(-1), type=pa.float32())
    columns["vector_l2"] = pa.FixedSizeListArray.from_arrays(flat_l2, dim)
    return pa.table(columns, schema=schema)


def mask_schema() -> pa.Schema:
    """Schema of a mask artifact: one row per mask (field meanings: ``awb_dagster.provenance.rows``)."""
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("mask_index", pa.int32()),
            ("rle_counts", pa.string()),  # COCO RLE, pycocotools' compressed counts as ASCII
            ("rle_size", pa.list_(pa.int32(), 2)),  # [height, width] of the plate
            ("mask_sha256", pa.string()),
            ("bbox", pa.list_(pa.int32(), 4)),  # XYWH, plate pixels
            ("area", pa.int64()),
            ("centroid", pa.list_(pa.float64(), 2)),  # (x, y), plate pixels
            ("area_fraction", pa.float64()),
            ("bbox_area_fraction", pa.float64()),
            ("bbox_fill", pa.float64()),
            ("predicted_iou", pa.float32()),
            ("stability_score", pa.float32()),
            ("point_coords", pa.list_(pa.float64(), 2)),  # (x, y), plate pixels
            ("crop_box", pa.list_(pa.int32(), 4)),  # XYWH, plate pixels
            ("fragmentation", pa.int32()),  # 8-connected components
        ]
    )


def mask_table(rows: list[dict]) -> pa.Table:
    """Build a mask artifact table (possibly empty: a plate where no mask passed the filters)."""
    schema = mask_schema()
    return pa.Table.from_pylist(rows, schema=schema)


def class_area_schema() -> pa.Schema:
    """Schema of a class-area artifact: one row per class present on a plate's semantic class map
    (field meanings: ``awb_dagster.instruments.semantic``)."""
    return pa.schema(
        [
            *RECORD_FIELDS,
            ("scope", pa.string()),  # "plate": the classes of the whole plate
            ("class_id", pa.int32()),
            ("label", pa.string()),
            ("pixel_count", pa.int64()),
            ("area_fraction", pa.float64()),
            ("class_map_path", pa.string()),  # the class map PNG, relative to the run directory
            ("class_map_sha256", pa.string()),  # sha256 of that PNG file
        ]
    )


def class_area_table(rows: list[dict]) -> pa.Table:
    """Build a class-area artifact table (every plate has at least one class)."""
    return pa.Table.from_pylist(rows, schema=class_area_schema())
