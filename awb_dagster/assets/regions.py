"""Region embeddings (seed 8.2): SAM segments and declared tiles, embedded by each image pin.

``segment_embeddings`` is partitioned by plate × ``segment_pins`` (one key per pair of an
embedding pin and a SAM pin), so "embed every mask of SAM pin S with CLIP pin C" is one
backfill: key ``C~S`` × all plates. Each record's ``region_ref`` is the mask record id, so
lineage runs embedding -> mask -> SAM pin -> plate. ``tile_embeddings`` is partitioned by
plate × ``tile_pins`` (embedding pins); its ``region_ref`` is the tile geometry.

Plates are decoded at full resolution (masks are at plate resolution), regions cut by the
declared policy, and each cut goes through the embedder's own processor. The region policy
and, for segments, the mask set are appended to the embedder's preprocess tag. Decoding and
cutting run in worker threads, overlapped with the model; each plate's records go to one
Parquet artifact of the pin pair's sealed run.
"""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import torch

from awb_dagster.assets.steps import add_partition_metadata, check_results, plate_metadata, split_keys
from awb_dagster.provenance.store import verified_path
from awb_dagster.constants import EMBEDDING_FAMILIES, GPU_POOL, GROUP_REGIONS, PLATE_FILES_KEY
from awb_dagster.instruments.embedding import ADAPTER_VERSION as EMBEDDING_ADAPTER_VERSION
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.regions import (
    EDGE_POLICIES,
    REGIONS_VERSION,
    CropPolicy,
    RegionError,
    Tiling,
    masks_tag,
    tile_ref,
)
from awb_dagster.plates.imaging import load_plate
from awb_dagster.instruments.streaming import prefetch_batches
from awb_dagster.partitions import region_partitions
from awb_dagster.plates.catalog import Plate
from awb_dagster.provenance.checks import (
    CHECK_DESCRIPTIONS,
    REGION_CHECK_DESCRIPTIONS,
    SEGMENT_REFS_RESOLVE,
    TILES_COVER_PLATE,
    check_embedding_pairs,
    check_segment_refs,
    check_tile_cover,
)
from awb_dagster.provenance.records import embedding_table, record_fields, split_segment_pin_key, tile_pair_key
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair
from awb_dagster.resources import AwbHome, InstrumentsResource, TorchResource

CODE_VERSION = f"{EMBEDDING_ADAPTER_VERSION}+{REGIONS_VERSION}"
_CROP = CropPolicy()
_TILING = Tiling()


class SegmentEmbeddingConfig(dg.Config):
    """The crop policy (recorded in the preprocess tag) and which mask set to embed."""

    force: bool = False  # recompute (plate, pin pair) partitions already in a sealed run
    padding: float = _CROP.padding  # bbox grown by this fraction of its longer side, each side
    apply_mask: bool = _CROP.apply_mask  # pixels outside the mask take `fill`
    fill: list[int] = list(_CROP.fill)  # RGB for outside-mask and transparent pixels
    min_region_area: int = _CROP.min_region_area  # masks smaller than this (pixels) are skipped
    # The SAM preprocess tag (generator settings) of the masks to embed; empty = the newest
    # sealed mask set of each plate under the SAM pin.
    sam_preprocess_tag: str = ""

    def policy(self) -> CropPolicy:
        return CropPolicy(
            padding=self.padding, apply_mask=self.apply_mask, fill=tuple(self.fill), min_region_area=self.min_region_area
        )


class TileEmbeddingConfig(dg.Config):
    """The declared tiling (recorded in the preprocess tag)."""

    force: bool = False
    tile_size: int = _TILING.tile_size  # plate pixels
    stride: int = _TILING.stride  # plate pixels; overlap = tile_size - stride
    edge: str = _TILING.edge  # shift | pad (see awb_dagster.instruments.regions.EDGE_POLICIES)
    fill: list[int] = list(_TILING.fill)

    def tiling(self) -> Tiling:
        return Tiling(tile_size=self.tile_size, stride=self.stride, edge=self.edge, fill=tuple(self.fill))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Region:
    """One region of a plate, cut and prepared for the embedder."""

    ref: str
    prepared: torch.Tensor


@dataclass(frozen=True)
class PlateRegions:
    """A plate's regions plus what the partition metadata reports about them."""

    plate: Plate
    tag: str  # the full preprocess tag of these records
    regions: list[Region]
    facts: dict[str, Any]


@dataclass(frozen=True)
class MaskSet:
    """The sealed SAM masks of one plate under one SAM pin and tag."""

    pair: SealedPair
    rows: list[dict[str, Any]]


class MaskSets:
    """The sealed mask sets of one SAM pin, indexed once: which set each plate's segments come
    from (``sam_tag``, or empty for each plate's newest set), and its rows, read on demand."""

    def __init__(self, store: RunStore, sam_pin: str, sam_tag: str):
        self.store, self.sam_pin, self.sam_tag = store, sam_pin, sam_tag
        self._pairs: dict[tuple[str, str], list[SealedPair]] = {}
        for (plate_id, sha, tag), pair in store.sealed_pairs(sam_pin).items():
            if not sam_tag or tag == sam_tag:
                self._pairs.setdefault((plate_id, sha), []).append(pair)

    def pair(self, plate: Plate) -> SealedPair:
        """The mask set the plate's segments are cut from (no file is read)."""
        pairs = self._pairs.get((plate.plate_id, plate.sha256))
        if not pairs:
            which = f" under preprocess tag {self.sam_tag!r}" if self.sam_tag else ""
            raise RegionError(
                f"no sealed sam_masks for plate {plate.plate_id} (sha256 {plate.sha256[:12]}) and SAM pin "
                f"{self.sam_pin}{which}; materialize sam_masks for partition {self.sam_pin}|{plate.plate_id} first"
            )
        return max(pairs, key=lambda p: p.run_id)  # run ids start with their UTC start time

    def load(self, plate: Plate) -> MaskSet:
        """The plate's mask rows, once the artifact's bytes match its sealed manifest."""
        pair = self.pair(plate)
        path = verified_path(self.store, pair.run_id, pair.artifact, pair.artifact_sha256)
        columns = ["record_id", "rle_counts", "rle_size", "bbox", "area"]
        return MaskSet(pair, pq.read_table(path, columns=columns).to_pylist())


def mask_set(store: RunStore, sam_pin: str, plate: Plate, sam_tag: str) -> MaskSet:
    """The plate's sealed masks under ``sam_pin`` (``sam_tag`` empty: the newest set)."""
    return MaskSets(store, sam_pin, sam_tag).load(plate)


def segment_tag(embedder: ImageEmbedder, policy: CropPolicy, sam_pin: str, sam_tag: str) -> str:
    """The preprocess tag of segment records: the embedder's, the crop policy, the mask set."""
    return f"{embedder.preprocess_tag};{policy.tag()};{masks_tag(sam_pin, sam_tag)}"


def segment_regions(
    embedder: ImageEmbedder, masks: MaskSets, policy: CropPolicy, max_pixels: int
) -> Callable[[Plate], PlateRegions]:
    """Plate -> its mask crops, prepared for ``embedder``. Thread-safe."""
    from pycocotools import mask as mask_utils

    def cut(plate: Plate) -> PlateRegions:
        plate_masks = masks.load(plate)
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        pixels = np.asarray(image)
        regions, small = [], 0
        for row in plate_masks.rows:
            if row["area"] < policy.min_region_area:
                small += 1
                continue
            mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
            crop = policy.crop(pixels, mask.astype(bool), tuple(row["bbox"]), opaque)
            regions.append(Region(row["record_id"], embedder.prepare(crop)))
        pair = plate_masks.pair
        facts = {
            "masks": len(plate_masks.rows),
            "skipped_below_min_area": small,
            "mask_run_id": pair.run_id,
            "mask_artifact": str(pair.artifact_path),
            "sam_preprocess_tag": pair.preprocess_tag,
        }
        return PlateRegions(plate, segment_tag(embedder, policy, masks.sam_pin, pair.preprocess_tag), regions, facts)

    return cut


def tile_regions(embedder: ImageEmbedder, tiling: Tiling, max_pixels: int) -> Callable[[Plate], PlateRegions]:
    """Plate -> its tiles, prepared for ``embedder``. Thread-safe."""

    def cut(plate: Plate) -> PlateRegions:
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        pixels = np.asarray(image)
        boxes = tiling.boxes(image.width, image.height)
        regions = [Region(tile_ref(box), embedder.prepare(tiling.crop(pixels, box, opaque))) for box in boxes]
        tag = f"{embedder.preprocess_tag};{tiling.tag()}"
        return PlateRegions(plate, tag, regions, {"tiles": len(boxes), "plate_size": f"{image.width}x{image.height}"})

    return cut


class _RegionPass:
    """Embeds the regions of a list of plates for one pin pair into one sealed run."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        embedder: ImageEmbedder,
        store: RunStore,
        torch_settings: TorchResource,
        *,
        pair_key: str,
        scope: str,
        config: dict[str, Any],
    ):
        self.context = context
        self.embedder = embedder
        self.torch_settings = torch_settings
        self.pair_key = pair_key
        self.scope = scope
        self.run: OpenRun = store.open_run(
            kind=f"{embedder.instrument.family}-{scope}-embeddings",
            dagster_run_id=context.run_id,
            code_version=CODE_VERSION,
            device=str(embedder.device),
            config={**config, "batch_size": torch_settings.batch_size, "pair_key": pair_key,
                    "dtype": str(embedder.dtype).removeprefix("torch.")},
        )  # fmt: skip
        self.run.add_instrument(embedder.describe())
        self.failures: list[str] = []
        self.facts: dict[str, dict[str, Any]] = {}

    def embed(self, plates: list[Plate], cut: Callable[[Plate], PlateRegions]) -> None:
        started, regions_done = time.perf_counter(), 0
        # One plate per slot: a plate's regions are cut in a worker while the model embeds the last.
        slots = prefetch_batches(
            plates,
            cut,
            batch_size=1,
            workers=self.torch_settings.decode_workers,
            prefetch_batches=max(1, self.torch_settings.prefetch_batches),
        )
        for done, (slot,) in enumerate(slots, start=1):
            plate = slot.item
            if slot.error is not None:  # a bad plate or a missing mask set fails its own partition
                reason = f"{type(slot.error).__name__}: {slot.error}"
                self.failures.append(f"{plate.plate_id}: {reason}")
                self.run.add_failure(plate_id=plate.plate_id, pin_key=self.pair_key, reason=reason)
                continue
            cut_plate: PlateRegions = slot.value
            vectors = self._vectors(cut_plate.regions)
            rows = [self._row(cut_plate, region) for region in cut_plate.regions]
            artifact = self.run.write_table(f"{self.scope}s", embedding_table(rows, vectors))
            self.run.add_plate(plate_metadata(plate))
            self.run.add_pair(
                plate_id=plate.plate_id,
                plate_sha256=plate.sha256,
                pin_key=self.pair_key,
                preprocess_tag=cut_plate.tag,
                record_ids=[row["record_id"] for row in rows],
                artifact=artifact,
            )
            self.facts[plate.plate_id] = {**cut_plate.facts, "records": len(rows)}
            regions_done += len(rows)
            elapsed = time.perf_counter() - started
            self.context.log.info(
                f"{self.pair_key}: {plate.plate_id}: {len(rows)} {self.scope} embeddings "
                f"({done}/{len(plates)} plates, {regions_done / elapsed:.1f} regions/s)"
            )
        elapsed = time.perf_counter() - started
        self.run.note("timing", {"plates": len(plates), "regions": regions_done, "seconds": round(elapsed, 3)})

    def _vectors(self, regions: list[Region]) -> np.ndarray:
        if not regions:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        size = self.torch_settings.batch_size
        chunks = [
            self.embedder.embed(self.embedder.pixel_values([r.prepared for r in regions[i : i + size]]))
            for i in range(0, len(regions), size)
        ]
        return np.concatenate(chunks)

    def _row(self, cut_plate: PlateRegions, region: Region) -> dict[str, Any]:
        embedder, plate = self.embedder, cut_plate.plate
        return {
            **record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=embedder.instrument.id,
                model_sha=embedder.pin.sha, pin_key=embedder.pin.key, preprocess_tag=cut_plate.tag,
                run_id=self.run.run_id, scope=self.scope, region=region.ref,
            ),  # fmt: skip
            "scope": self.scope,
            "region_ref": region.ref,
        }


def _partition_metadata(
    embedder: ImageEmbedder, pair: SealedPair, facts: dict[str, Any] | None, *, reused: bool, home: str
) -> dict[str, Any]:
    first = pair.record_ids[0] if pair.record_ids else None
    metadata = {
        "records": len(pair.record_ids),
        "plate_id": pair.plate_id,
        "plate_sha256": pair.plate_sha256,
        "model_id": embedder.instrument.id,
        "model_sha": embedder.pin.sha,
        "pin": embedder.pin.key,
        "pair": pair.pin_key,
        "license": embedder.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "vector_dim": embedder.dim,
        "artifact": dg.MetadataValue.path(str(pair.artifact_path)),
        "artifact_sha256": pair.artifact_sha256,
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if reused else "computed",
        "lineage": dg.MetadataValue.md(f"`awb lineage {first} --home {home}`" if first else "no regions"),
    }
    for key, value in (facts or {}).items():
        metadata[key] = dg.MetadataValue.path(value) if key == "mask_artifact" else value
    return metadata


def _materialize_regions(
    context: dg.AssetExecutionContext,
    *,
    scope: str,
    force: bool,
    home: AwbHome,
    instruments: InstrumentsResource,
    torch_settings: TorchResource,
    plan: Callable[[str, ImageEmbedder], tuple[str, Callable[[Plate], PlateRegions], Callable[[Plate], str | None], dict]],
) -> dg.MaterializeResult:
    """The shared loop of both region assets. ``plan(partition pin key, embedder)`` gives the
    store pair key, the cutter, the expected tag of a plate (None when it cannot be known
    before cutting) and the run config for the manifest."""
    catalog, store = home.catalog(), home.store()
    problems: list[str] = []
    checked: list[SealedPair] = []
    declared_dims: dict[str, int] = {}
    for key_in_dim, keyed_plates in split_keys(context.assets_def.partitions_def, context.partition_keys).items():
        embedding_pin = split_segment_pin_key(key_in_dim)[0] if scope == "segment" else key_in_dim
        family = instruments.family_of(embedding_pin)
        if family not in EMBEDDING_FAMILIES:
            raise dg.Failure(f"pin {embedding_pin} is a {family} model, not an image embedder ({', '.join(EMBEDDING_FAMILIES)})")
        embedder = instruments.embedder(embedding_pin, family, jpeg_draft=False)
        pair_key, cut, expected_tag, run_config = plan(key_in_dim, embedder)
        sealed = store.sealed_pairs(pair_key)
        todo: list[Plate] = []
        for _, plate_id in keyed_plates:
            plate = catalog.plates.get(plate_id)
            if plate is None:
                problems.append(f"{plate_id}: not in the plate catalog {catalog.path}")
                continue
            tag = expected_tag(plate)
            if force or tag is None or (plate_id, plate.sha256, tag) not in sealed:
                todo.append(plate)
        context.log.info(f"{pair_key}: {len(keyed_plates)} partitions, {len(todo)} to embed")
        region_pass = None
        if todo:
            region_pass = _RegionPass(
                context, embedder, store, torch_settings, pair_key=pair_key, scope=scope, config=run_config
            )
            region_pass.embed(todo, cut)
            manifest = region_pass.run.seal()
            problems.extend(region_pass.failures)
            context.log.info(f"{pair_key}: sealed run {manifest.run_id} at {manifest.run_dir}")
        sealed = store.sealed_pairs(pair_key)
        metadata_by_key = {}
        for key, plate_id in keyed_plates:
            plate = catalog.plates.get(plate_id)
            if plate is None:
                continue
            candidates = [p for (pid, sha, _), p in sealed.items() if pid == plate_id and sha == plate.sha256]
            tag = expected_tag(plate)
            if tag is not None:
                candidates = [p for p in candidates if p.preprocess_tag == tag]
            if region_pass is not None and plate_id in region_pass.facts:
                candidates = [p for p in candidates if p.run_id == region_pass.run.run_id]
            if not candidates:
                continue
            pair = max(candidates, key=lambda p: p.run_id)
            computed = region_pass is not None and pair.run_id == region_pass.run.run_id
            facts = region_pass.facts.get(plate_id) if computed else None
            metadata_by_key[key] = _partition_metadata(embedder, pair, facts, reused=not computed, home=home.home)
            checked.append(pair)
        add_partition_metadata(context, metadata_by_key)
        declared_dims[pair_key] = embedder.dim
    if problems:
        raise dg.Failure(
            description=f"{len(problems)} plate(s) could not be embedded; the others are sealed and a "
            "retry skips them:\n" + "\n".join(problems),
        )
    outcomes = check_embedding_pairs(store, checked, declared_dims=declared_dims)
    if scope == "segment":
        outcomes.update(check_segment_refs(store, checked))
    else:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        outcomes.update(check_tile_cover(store, checked, sizes))
    return dg.MaterializeResult(
        metadata={"model_loads": instruments.loads}, check_results=check_results(context, outcomes)
    )


def _segment_embeddings(
    context: dg.AssetExecutionContext,
    config: SegmentEmbeddingConfig,
    home: AwbHome,
    instruments: InstrumentsResource,
    torch_settings: TorchResource,
) -> dg.MaterializeResult:
    try:
        policy = config.policy()
    except RegionError as exc:
        raise dg.Failure(f"segment_embeddings config: {exc}") from exc
    store = home.store()

    def plan(key: str, embedder: ImageEmbedder):
        sam_pin = split_segment_pin_key(key)[1]
        masks = MaskSets(store, sam_pin, config.sam_preprocess_tag)
        cut = segment_regions(embedder, masks, policy, home.max_pixels)

        def expected(plate: Plate) -> str | None:
            """The tag of the plate's records, so sealed plates are skipped; None: cut() reports why not."""
            try:
                return segment_tag(embedder, policy, sam_pin, masks.pair(plate).preprocess_tag)
            except RegionError:
                return None

        run_config = {"crop_policy": policy.tag(), "sam_pin": sam_pin, "sam_preprocess_tag": config.sam_preprocess_tag or "newest per plate"}
        return key, cut, expected, run_config

    return _materialize_regions(
        context, scope="segment", force=config.force, home=home, instruments=instruments,
        torch_settings=torch_settings, plan=plan,
    )  # fmt: skip


def _tile_embeddings(
    context: dg.AssetExecutionContext,
    config: TileEmbeddingConfig,
    home: AwbHome,
    instruments: InstrumentsResource,
    torch_settings: TorchResource,
) -> dg.MaterializeResult:
    try:
        tiling = config.tiling()
    except RegionError as exc:
        raise dg.Failure(f"tile_embeddings config: {exc}") from exc

    def plan(key: str, embedder: ImageEmbedder):
        tag = f"{embedder.preprocess_tag};{tiling.tag()}"
        run_config = {"tiling": tiling.tag(), "edge_policy": EDGE_POLICIES[tiling.edge]}
        return tile_pair_key(key), tile_regions(embedder, tiling, home.max_pixels), lambda plate: tag, run_config

    return _materialize_regions(
        context, scope="tile", force=config.force, home=home, instruments=instruments,
        torch_settings=torch_settings, plan=plan,
    )  # fmt: skip


def _region_asset(
    fn: Callable[..., dg.MaterializeResult], name: str, description: str, pins: str, deps: list, check: str
) -> dg.AssetsDefinition:
    """A region asset: plate × ``pins`` partitions, single-run backfills, the gpu pool, the five
    embedding checks plus its own ``check``, all blocking (one evaluation per step, as for the
    family assets)."""
    checks = {**CHECK_DESCRIPTIONS, check: REGION_CHECK_DESCRIPTIONS[check]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in Dagster 1.13
        return dg.asset(
            name=name,
            description=description,
            partitions_def=region_partitions(pins),
            backfill_policy=dg.BackfillPolicy.single_run(),
            pool=GPU_POOL,
            group_name=GROUP_REGIONS,
            code_version=CODE_VERSION,
            kinds={"pytorch", "parquet"},
            deps=deps,
            check_specs=[dg.AssetCheckSpec(n, asset=name, description=d, blocking=True) for n, d in checks.items()],
        )(fn)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # MultiPartitionMapping is beta in Dagster 1.13
    # The plate dimension maps one to one; a segment key depends on its plate's masks under every
    # SAM pin (an upstream dimension left out of the mapping maps to all of its keys).
    _masks_by_plate = dg.MultiPartitionMapping(
        {"plate": dg.DimensionPartitionMapping("plate", dg.IdentityPartitionMapping())}
    )

segment_embeddings = _region_asset(
    _segment_embeddings,
    "segment_embeddings",
    "For each SAM mask of a plate, an embedding from one CLIP/SigLIP/DINOv2 pin: partitioned by plate × "
    "`<embedding pin>~<SAM pin>`. The crop policy and the mask set are in the preprocess tag; `region_ref` is "
    "the mask record id.",
    "segment_pins",
    [dg.AssetDep("sam_masks", partition_mapping=_masks_by_plate), "plate_catalog", PLATE_FILES_KEY],
    SEGMENT_REFS_RESOLVE,
)
tile_embeddings = _region_asset(
    _tile_embeddings,
    "tile_embeddings",
    "A declared tiling of each plate (tile size, stride, edge policy), each tile embedded by one "
    "CLIP/SigLIP/DINOv2 pin: partitioned by plate × embedding pin, `scope=tile`, `region_ref` = the tile's XYWH "
    "in plate pixels.",
    "tile_pins",
    ["plate_catalog", PLATE_FILES_KEY],
    TILES_COVER_PLATE,
)
