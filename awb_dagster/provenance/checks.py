"""The embedding output contract, checked on sealed records (seed section 8).

Pure functions over sealed pairs: the family assets turn the outcomes into Dagster asset
check results. Each outcome names every failing record or file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from awb_dagster.hashing import sha256_file
from awb_dagster.provenance.rows import mask_sha256
from awb_dagster.provenance.store import RunStore, SealedPair
from awb_dagster.provenance.verify import verify_artifacts

UNIT_NORM_TOLERANCE = 1e-3  # float32 rows normalized in float32 land within ~1e-6 of 1

VECTORS_FINITE = "vectors_finite"
VECTOR_DIM_DECLARED = "vector_dim_declared"
VECTOR_L2_UNIT_NORM = "vector_l2_unit_norm"
RECORD_IDS_UNIQUE = "record_ids_unique"
ARTIFACT_CHECKSUMS = "artifact_checksums"

CHECK_DESCRIPTIONS = {
    VECTORS_FINITE: "Every value of `vector` and `vector_l2` is finite (no NaN or inf).",
    VECTOR_DIM_DECLARED: "`vector_dim` and the length of `vector` and `vector_l2` equal the dim the "
    "registry declares for the model.",
    VECTOR_L2_UNIT_NORM: f"Every `vector_l2` has L2 norm 1 within {UNIT_NORM_TOLERANCE}.",
    RECORD_IDS_UNIQUE: "Every record id of the materialized partitions appears exactly once in its "
    "artifact, and no artifact repeats a record id.",
    ARTIFACT_CHECKSUMS: "Every artifact behind the materialized partitions still has the sha256 its "
    "run manifest lists.",
}


@dataclass(frozen=True)
class Failure:
    """One failing record (or, for the checksum check, one file)."""

    artifact: str  # <run_id>/<relpath>
    detail: str
    record_id: str = ""
    plate_id: str = ""


@dataclass
class CheckOutcome:
    """The result of one contract check over a set of sealed pairs."""

    name: str
    checked: int = 0  # records, or files for the checksum check
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _rows(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A list column as one float array per row (a null row is an empty array)."""
    array = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.split(flat, np.cumsum(lengths)[:-1])


def check_embedding_pairs(
    store: RunStore,
    pairs: Sequence[SealedPair],
    *,
    declared_dims: Mapping[str, int],
    tolerance: float = UNIT_NORM_TOLERANCE,
) -> dict[str, CheckOutcome]:
    """Run every embedding contract check over the records of ``pairs``; outcomes by check name.

    ``declared_dims`` maps each pin key to the vector dim the registry declares for its model.
    """
    outcomes = {name: CheckOutcome(name) for name in CHECK_DESCRIPTIONS}
    by_artifact: dict[tuple[str, str], list[SealedPair]] = defaultdict(list)
    for pair in pairs:
        by_artifact[(pair.run_id, pair.artifact)].append(pair)

    by_run: dict[str, list[str]] = defaultdict(list)
    for run_id, relpath in by_artifact:
        by_run[run_id].append(relpath)
    for run_id, relpaths in by_run.items():
        checksums = outcomes[ARTIFACT_CHECKSUMS]
        checksums.checked += len(relpaths)
        checksums.failures.extend(
            Failure(artifact=f"{p.run_id}/{p.path}", detail=f"{p.kind}: {p.detail}")
            for p in verify_artifacts(store.manifest(run_id), relpaths)
        )

    for (run_id, relpath), artifact_pairs in by_artifact.items():
        declared_dim = declared_dims[artifact_pairs[0].pin_key]  # a sealed run embeds one pin
        _check_artifact(outcomes, f"{run_id}/{relpath}", artifact_pairs, declared_dim, tolerance)
    return outcomes


def _check_artifact(
    outcomes: dict[str, CheckOutcome],
    name: str,
    pairs: list[SealedPair],
    declared_dim: int,
    tolerance: float,
) -> None:
    plate_of = {record: pair.plate_id for pair in pairs for record in pair.record_ids}
    record_checks = (VECTORS_FINITE, VECTOR_DIM_DECLARED, VECTOR_L2_UNIT_NORM, RECORD_IDS_UNIQUE)
    for check_name in record_checks:
        outcomes[check_name].checked += len(plate_of)

    def fail(check_name: str, record: str, detail: str) -> None:
        outcomes[check_name].failures.append(Failure(name, detail, record, plate_of.get(record, "")))

    try:
        table = pq.read_table(pairs[0].artifact_path, columns=["record_id", "vector_dim", "vector", "vector_l2"])
    except (OSError, pa.ArrowException) as exc:  # missing, unreadable or not Parquet any more
        for record in plate_of:
            for check_name in record_checks:
                fail(check_name, record, f"artifact cannot be read ({type(exc).__name__}: {exc})")
        return

    ids = table.column("record_id").to_pylist()
    counts = Counter(ids)
    for record, count in sorted(counts.items(), key=lambda item: str(item[0])):
        if count > 1:
            fail(RECORD_IDS_UNIQUE, str(record), f"appears {count} times in the artifact")
    for record in plate_of:
        if record not in counts:
            fail(RECORD_IDS_UNIQUE, record, "listed in the manifest but not in the artifact")

    dims = table.column("vector_dim").to_pylist()
    vectors, unit = _rows(table.column("vector")), _rows(table.column("vector_l2"))
    for row, record in enumerate(ids):
        if record not in plate_of:
            continue
        raw, normalized = vectors[row], unit[row]
        if not (np.isfinite(raw).all() and np.isfinite(normalized).all()):
            bad = int((~np.isfinite(raw)).sum() + (~np.isfinite(normalized)).sum())
            fail(VECTORS_FINITE, record, f"{bad} non-finite value(s)")
        if not dims[row] == len(raw) == len(normalized) == declared_dim:
            fail(
                VECTOR_DIM_DECLARED,
                record,
                f"vector_dim {dims[row]}, len(vector) {len(raw)}, len(vector_l2) {len(normalized)}; "
                f"declared {declared_dim}",
            )
        norm = float(np.linalg.norm(normalized))
        if not abs(norm - 1.0) <= tolerance:
            fail(VECTOR_L2_UNIT_NORM, record, f"|vector_l2| = {norm:.6g}")


MASKS_DECODE_TO_PLATE_SIZE = "masks_decode_to_plate_size"

MASK_CHECK_DESCRIPTIONS = {
    MASKS_DECODE_TO_PLATE_SIZE: "Every mask record's COCO RLE decodes with pycocotools to the plate's "
    "height × width, its decoded bytes hash to `mask_sha256`, and the artifact lists exactly the "
    "record ids its manifest names.",
}


def check_mask_pairs(
    pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]
) -> dict[str, CheckOutcome]:
    """Decode every mask of ``pairs``; ``plate_sizes`` maps plate sha256 -> (height, width)."""
    from pycocotools import mask as mask_utils

    outcome = CheckOutcome(MASKS_DECODE_TO_PLATE_SIZE)
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        outcome.checked += len(pair.record_ids)

        def fail(record: str, detail: str, pair: SealedPair = pair, name: str = name) -> None:
            outcome.failures.append(Failure(name, detail, record, pair.plate_id))

        try:
            table = pq.read_table(pair.artifact_path, columns=["record_id", "rle_counts", "rle_size", "mask_sha256"])
        except (OSError, pa.ArrowException) as exc:
            for record in pair.record_ids:
                fail(record, f"artifact cannot be read ({type(exc).__name__}: {exc})")
            continue
        expected = plate_sizes.get(pair.plate_sha256)
        rows = table.to_pylist()
        if Counter(r["record_id"] for r in rows) != Counter(pair.record_ids):
            fail("", f"record ids differ: {len(rows)} in the artifact, {len(pair.record_ids)} in the manifest")
        for row in rows:
            try:
                mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
            except Exception as exc:  # pycocotools raises bare Exceptions and TypeErrors on bad input
                fail(row["record_id"], f"RLE does not decode ({type(exc).__name__}: {exc})")
                continue
            if expected is None or mask.shape != expected:
                fail(row["record_id"], f"decodes to {mask.shape}, the plate is {expected} (height, width)")
            elif mask_sha256(mask) != row["mask_sha256"]:
                fail(row["record_id"], "decoded mask does not hash to mask_sha256")
    return {outcome.name: outcome}


SEGMENT_REFS_RESOLVE = "segment_refs_resolve"
BOX_MASK_RUN_KIND = "box-masks"
MASK_RUN_KINDS = ("sam-masks", BOX_MASK_RUN_KIND)  # the runs of sam_masks and box_masks
TILES_COVER_PLATE = "tiles_cover_plate"

REGION_CHECK_DESCRIPTIONS = {
    SEGMENT_REFS_RESOLVE: "Every segment embedding's `region_ref` is the record id of a mask in a sealed "
    "sam_masks or box_masks run of the same plate bytes, and its `scope` is `segment`.",
    TILES_COVER_PLATE: "The tiles of every plate cover every plate pixel, each tile overlaps the plate, "
    "and every tile record has `scope` `tile`.",
}


def _region_rows(pair: SealedPair, fail) -> list[dict] | None:
    try:
        table = pq.read_table(pair.artifact_path, columns=["record_id", "scope", "region_ref"])
    except (OSError, pa.ArrowException) as exc:
        for record in pair.record_ids:
            fail(record, f"artifact cannot be read ({type(exc).__name__}: {exc})")
        return None
    return table.to_pylist()


def check_segment_refs(store: RunStore, pairs: Sequence[SealedPair]) -> dict[str, CheckOutcome]:
    """Each segment record of ``pairs`` points at an existing mask record of its plate."""
    outcome = CheckOutcome(SEGMENT_REFS_RESOLVE)
    masks: dict[str, str] = {}  # mask record id -> plate sha256, over every sealed run
    for manifest in store.manifests():
        if manifest.payload.get("kind") in MASK_RUN_KINDS:
            for pair in manifest.pairs:
                masks.update(dict.fromkeys(pair["record_ids"], pair["plate_sha256"]))
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"

        def fail(record: str, detail: str, pair: SealedPair = pair, name: str = name) -> None:
            outcome.failures.append(Failure(name, detail, record, pair.plate_id))

        rows = _region_rows(pair, fail)
        if rows is None:
            continue
        outcome.checked += len(rows)
        for row in rows:
            ref = row["region_ref"]
            if row["scope"] != "segment":
                fail(row["record_id"], f"scope is {row['scope']!r}, not 'segment'")
            elif ref not in masks:
                fail(row["record_id"], f"region_ref {ref!r} is no mask record of any sealed sam_masks or box_masks run")
            elif masks[ref] != pair.plate_sha256:
                fail(row["record_id"], f"mask {ref} belongs to plate bytes {masks[ref][:12]}, not {pair.plate_sha256[:12]}")
    return {outcome.name: outcome}


def check_tile_cover(
    store: RunStore, pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]
) -> dict[str, CheckOutcome]:
    """The tiles of each pair cover its plate; ``plate_sizes`` maps plate sha256 -> (height, width)."""
    from awb_dagster.instruments.regions import RegionError, parse_tile_ref

    outcome = CheckOutcome(TILES_COVER_PLATE)
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"

        def fail(record: str, detail: str, pair: SealedPair = pair, name: str = name) -> None:
            outcome.failures.append(Failure(name, detail, record, pair.plate_id))

        rows = _region_rows(pair, fail)
        if rows is None:
            continue
        outcome.checked += len(rows)
        size = plate_sizes.get(pair.plate_sha256)
        if size is None:
            fail("", f"plate bytes {pair.plate_sha256[:12]} are not in the catalog")
            continue
        height, width = size
        covered = np.zeros((height, width), dtype=bool)
        for row in rows:
            try:
                x, y, w, h = parse_tile_ref(row["region_ref"] or "")
            except (RegionError, ValueError) as exc:
                fail(row["record_id"], str(exc))
                continue
            if row["scope"] != "tile":
                fail(row["record_id"], f"scope is {row['scope']!r}, not 'tile'")
            if w < 1 or h < 1 or x >= width or y >= height or x < 0 or y < 0:
                fail(row["record_id"], f"tile {x},{y},{w},{h} does not overlap the {width}x{height} plate")
                continue
            covered[y : y + h, x : x + w] = True
        if not covered.all():
            fail("", f"{int((~covered).sum())} of {width * height} plate pixels are in no tile")
    return {outcome.name: outcome}


CLASS_MAP_DECODES_TO_PLATE_SIZE = "class_map_decodes_to_plate_size"
CLASS_AREAS_SUM_TO_PLATE = "class_areas_sum_to_plate"

CLASS_MAP_CHECK_DESCRIPTIONS = {
    CLASS_MAP_DECODES_TO_PLATE_SIZE: "Every plate's class map PNG hashes to the `class_map_sha256` its "
    "class-area rows name and decodes to the plate's height × width.",
    CLASS_AREAS_SUM_TO_PLATE: "Every plate's class-area rows list exactly the record ids its manifest "
    "names, count the class map's pixels per class, and sum to the plate area (fractions to 1).",
}


def check_class_map_pairs(
    pairs: Sequence[SealedPair], plate_sizes: Mapping[str, tuple[int, int]]
) -> dict[str, CheckOutcome]:
    """Decode every class map of ``pairs`` and recount its areas; ``plate_sizes`` maps plate
    sha256 -> (height, width)."""
    from awb_dagster.instruments.semantic import decode_class_map

    decodes = CheckOutcome(CLASS_MAP_DECODES_TO_PLATE_SIZE)
    sums = CheckOutcome(CLASS_AREAS_SUM_TO_PLATE)
    for pair in pairs:
        name = f"{pair.run_id}/{pair.artifact}"
        decodes.checked += 1
        sums.checked += len(pair.record_ids)

        def fail(
            outcome: CheckOutcome, detail: str, record: str = "", pair: SealedPair = pair, name: str = name
        ) -> None:
            outcome.failures.append(Failure(name, detail, record, pair.plate_id))

        try:
            rows = pq.read_table(pair.artifact_path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            fail(decodes, f"artifact cannot be read ({type(exc).__name__}: {exc})")
            fail(sums, f"artifact cannot be read ({type(exc).__name__}: {exc})")
            continue
        if Counter(r["record_id"] for r in rows) != Counter(pair.record_ids):
            fail(sums, f"record ids differ: {len(rows)} in the artifact, {len(pair.record_ids)} in the manifest")
        maps = {(r["class_map_path"], r["class_map_sha256"]) for r in rows}
        if len(maps) != 1:
            fail(decodes, f"the rows name {len(maps)} class maps, not one")
            continue
        ((relpath, digest),) = maps
        path = pair.artifact_path.parent / relpath
        try:
            actual = sha256_file(path)
            class_ids = decode_class_map(path)
        except (OSError, ValueError) as exc:
            fail(decodes, f"{relpath} cannot be read or decoded ({type(exc).__name__}: {exc})")
            continue
        expected = plate_sizes.get(pair.plate_sha256)
        if actual != digest:
            fail(decodes, f"{relpath} has sha256 {actual[:12]}, the rows name {digest[:12]}")
        elif expected is None or class_ids.shape != expected:
            fail(decodes, f"{relpath} decodes to {class_ids.shape}, the plate is {expected} (height, width)")
        counts = np.bincount(class_ids.ravel())
        for row in rows:
            decoded = int(counts[row["class_id"]]) if row["class_id"] < len(counts) else 0
            if decoded != row["pixel_count"]:
                detail = f"class {row['class_id']}: {row['pixel_count']} pixels listed, {decoded} in the map"
                fail(sums, detail, row["record_id"])
        listed = sum(r["pixel_count"] for r in rows)
        if listed != class_ids.size or (expected is not None and listed != expected[0] * expected[1]):
            fail(sums, f"pixel counts sum to {listed}; the map has {class_ids.size} pixels, the plate {expected}")
        fractions = sum(r["area_fraction"] for r in rows)
        if not abs(fractions - 1.0) <= 1e-9:
            fail(sums, f"area fractions sum to {fractions!r}, not 1")
    return {decodes.name: decodes, sums.name: sums}
