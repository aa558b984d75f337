"""The plate × pin embedding asset shared by the CLIP, SigLIP and DINOv2 families.

One Dagster step may cover many partitions (single-run backfills): weights load once per
pin, plates stream through the model in batches with decoding overlapped, and each
(plate, pin) partition gets its own provenance metadata. The output contract is checked on
every record the step covers, computed or reused, by blocking asset checks.
"""


import time
import warnings
from typing import Any

import dagster as dg
import torch

from awb_dagster.constants import GPU_POOL, GROUP_EMBEDDINGS, PLATE_FILES_KEY
from awb_dagster.instruments.embedding import ADAPTER_VERSION, ImageEmbedder
from awb_dagster.instruments.streaming import prefetch_batches
from awb_dagster.partitions import plate_pin_partitions
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.assets.steps import add_partition_metadata, check_results, plate_metadata, split_keys
from awb_dagster.provenance.checks import CHECK_DESCRIPTIONS, check_embedding_pairs
from awb_dagster.provenance.records import embedding_table, record_fields
from awb_dagster.provenance.store import Artifact, OpenRun, RunStore, SealedPair
from awb_dagster.resources import AwbHome, InstrumentsResource, TorchResource


class EmbeddingRunConfig(dg.Config):
    force: bool = False  # recompute (plate, pin) pairs that are already in a sealed run


def _partition_metadata(
    embedder: ImageEmbedder, pair: SealedPair, *, reused: bool, home: str
) -> dict[str, Any]:
    record = pair.record_ids[0]
    return {
        "record_id": record,
        "plate_id": pair.plate_id,
        "plate_sha256": pair.plate_sha256,
        "model_id": embedder.instrument.id,
        "model_sha": embedder.pin.sha,
        "pin": pair.pin_key,
        "license": embedder.instrument.license,
        "preprocess_tag": pair.preprocess_tag,
        "vector_dim": embedder.dim,
        "artifact": dg.MetadataValue.path(str(pair.artifact_path)),
        "artifact_sha256": pair.artifact_sha256,
        "run_id": pair.run_id,
        "dagster_run_id": pair.dagster_run_id or "",
        "status": f"reused from sealed run {pair.run_id}" if reused else "computed",
        "lineage": dg.MetadataValue.md(f"`awb lineage {record} --home {home}`"),
    }


class _PinPass:
    """Embeds the plates of one pin into one sealed run."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        embedder: ImageEmbedder,
        store: RunStore,
        torch_settings: TorchResource,
        max_pixels: int,
    ):
        self.context = context
        self.embedder = embedder
        self.store = store
        self.torch_settings = torch_settings
        self.max_pixels = max_pixels
        self.run: OpenRun | None = None
        self.failures: list[str] = []

    def _open_run(self) -> OpenRun:
        if self.run is None:
            self.run = self.store.open_run(
                kind=f"{self.embedder.instrument.family}-embeddings",
                dagster_run_id=self.context.run_id,
                code_version=ADAPTER_VERSION,
                device=str(self.embedder.device),
                config={
                    "batch_size": self.torch_settings.batch_size,
                    "decode_workers": self.torch_settings.decode_workers,
                    "dtype": str(self.embedder.dtype).removeprefix("torch."),
                    "max_pixels": self.max_pixels,
                },
            )
            self.run.add_instrument(self.embedder.describe())
        return self.run

    def embed(self, plates: list[Plate]) -> list[str]:
        """Embed ``plates``; returns the plate ids sealed. Failures are kept per plate."""
        embedder = self.embedder
        run = self._open_run()
        done: list[str] = []
        started = time.perf_counter()

        def prepare(plate: Plate) -> torch.Tensor:
            return embedder.load_plate(plate.path, plate.sha256, max_pixels=self.max_pixels)

        batches = prefetch_batches(
            plates,
            prepare,
            batch_size=self.torch_settings.batch_size,
            workers=self.torch_settings.decode_workers,
            prefetch_batches=self.torch_settings.prefetch_batches,
        )
        for batch in batches:
            good = [slot for slot in batch if slot.error is None]
            for slot in batch:
                if slot.error is not None:
                    reason = f"{type(slot.error).__name__}: {slot.error}"
                    self.failures.append(f"{slot.item.plate_id}: {reason}")
                    run.add_failure(plate_id=slot.item.plate_id, pin_key=embedder.pin.key, reason=reason)
            if not good:
                continue
            vectors = embedder.embed(embedder.pixel_values([slot.value for slot in good]))
            rows = [self._row(slot.item, run.run_id) for slot in good]
            artifact = run.write_table("embeddings", embedding_table(rows, vectors))
            for slot, row in zip(good, rows):
                run.add_plate(plate_metadata(slot.item))
                self._add_pair(run, slot.item, row["record_id"], artifact)
                done.append(slot.item.plate_id)
            elapsed = time.perf_counter() - started
            self.context.log.info(
                f"{embedder.pin.key}: {len(done)}/{len(plates)} plates embedded "
                f"({len(done) / elapsed:.1f} plates/s)"
            )
        elapsed = time.perf_counter() - started
        run.note(
            "timing",
            {"plates": len(done), "stream_seconds": round(elapsed, 3), "plates_per_second": round(len(done) / elapsed, 2)},
        )
        return done

    def _row(self, plate: Plate, run_id: str) -> dict[str, Any]:
        embedder = self.embedder
        return {
            **record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=embedder.instrument.id,
                model_sha=embedder.pin.sha, pin_key=embedder.pin.key, preprocess_tag=embedder.preprocess_tag,
                run_id=run_id, scope="plate",
            ),  # fmt: skip
            "scope": "plate",
            "region_ref": None,
        }

    def _add_pair(self, run: OpenRun, plate: Plate, rec_id: str, artifact: Artifact) -> None:
        run.add_pair(
            plate_id=plate.plate_id,
            plate_sha256=plate.sha256,
            pin_key=self.embedder.pin.key,
            preprocess_tag=self.embedder.preprocess_tag,
            record_ids=[rec_id],
            artifact=artifact,
        )


def build_embedding_asset(family: str, description: str) -> dg.AssetsDefinition:
    """The ``<family>_embeddings`` asset, partitioned by plate × pin."""
    partitions_def = plate_pin_partitions(family)

    def _embeddings(
        context: dg.AssetExecutionContext,
        config: EmbeddingRunConfig,
        home: AwbHome,
        instruments: InstrumentsResource,
        torch_settings: TorchResource,
    ) -> dg.MaterializeResult:
        catalog = home.catalog()
        store = home.store()
        problems: list[str] = []
        checked_pairs: list[SealedPair] = []
        declared_dims: dict[str, int] = {}
        for pin_key, keyed_plates in split_keys(partitions_def, context.partition_keys).items():
            embedder = instruments.embedder(pin_key, family)
            sealed = {} if config.force else store.sealed_pairs(pin_key)
            todo, missing = _plan(catalog, keyed_plates, sealed, embedder)
            problems.extend(f"{plate_id}: not in the plate catalog {catalog.path}" for plate_id in missing)
            context.log.info(
                f"{pin_key}: {len(keyed_plates)} partitions, {len(todo)} to embed, "
                f"{len(keyed_plates) - len(todo) - len(missing)} already sealed"
            )
            pin_pass = _PinPass(context, embedder, store, torch_settings, home.max_pixels)
            if todo:
                pin_pass.embed(todo)
                manifest = pin_pass.run.seal()
                context.log.info(f"{pin_key}: sealed run {manifest.run_id} at {manifest.run_dir}")
            problems.extend(pin_pass.failures)
            sealed = store.sealed_pairs(pin_key)
            metadata_by_key = {}
            for key, plate_id in keyed_plates:
                plate = catalog.plates.get(plate_id)
                pair = sealed.get((plate_id, plate.sha256, embedder.preprocess_tag)) if plate else None
                if pair is None:
                    continue
                reused = pin_pass.run is None or pair.run_id != pin_pass.run.run_id
                metadata_by_key[key] = _partition_metadata(embedder, pair, reused=reused, home=home.home)
                checked_pairs.append(pair)
            add_partition_metadata(context, metadata_by_key)
            declared_dims[pin_key] = _declared_dim(embedder)
        if problems:
            raise dg.Failure(
                description=f"{len(problems)} plate(s) could not be embedded; the others are sealed "
                "and a retry skips them:\n" + "\n".join(problems),
            )
        outcomes = check_embedding_pairs(store, checked_pairs, declared_dims=declared_dims)
        return dg.MaterializeResult(
            metadata={"model_loads": instruments.loads}, check_results=check_results(context, outcomes)
        )

    with warnings.catch_warnings():
        # backfill_policy is marked beta in Dagster 1.13; single-run backfills are the point here.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            name=f"{family}_embeddings",
            description=description,
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.single_run(),
            pool=GPU_POOL,
            group_name=GROUP_EMBEDDINGS,
            code_version=ADAPTER_VERSION,
            kinds={"pytorch", "parquet"},
            deps=["plate_catalog", PLATE_FILES_KEY],
            # Dagster 1.13 evaluates these checks once per step, not per partition: a range run
            # (single-run backfill) records one evaluation per check with no partition, and
            # AssetCheckResult cannot name one (a partitioned AssetCheckSpec is a preview and
            # still gets no partition in a range run). So each result covers every partition of
            # the step and its metadata names the failing records and files.
            check_specs=[
                # Blocking: each guards what downstream assets (the atlas) read from the artifacts.
                dg.AssetCheckSpec(name, asset=f"{family}_embeddings", description=description, blocking=True)
                for name, description in CHECK_DESCRIPTIONS.items()
            ],
        )(_embeddings)


def _declared_dim(embedder: ImageEmbedder) -> int:
    declared = embedder.instrument.expected_dim
    if declared is None:  # the admission gate requires it for vector outputs
        raise dg.Failure(
            f"{embedder.instrument.id}: roster.toml declares no expected_dim, so the dim check has "
            "nothing to check against; declare it"
        )
    return declared


def _plan(
    catalog: PlateCatalog,
    keyed_plates: list[tuple[str, str]],
    sealed: dict[tuple[str, str, str], SealedPair],
    embedder: ImageEmbedder,
) -> tuple[list[Plate], list[str]]:
    todo: list[Plate] = []
    missing: list[str] = []
    for _, plate_id in keyed_plates:
        plate = catalog.plates.get(plate_id)
        if plate is None:
            missing.append(plate_id)
        elif (plate_id, plate.sha256, embedder.preprocess_tag) not in sealed:
            todo.append(plate)
    return todo, missing
