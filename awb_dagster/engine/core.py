"""The plate × pin loop, once for every family (DESIGN.md §1, "One engine, many producers").

Per pin of a step: load the instrument once (the producer's session), split the step's plates
into sealed pairs (reused unless forced) and plates to process, open one sealed run, stream the
plates through the session (per-plate work in decode threads, overlapped with the model),
seal, and report every partition that has a sealed pair with its provenance. A plate that
fails is named in ``problems`` and in the run's manifest; the other plates stay sealed, so a
retry processes only what is missing.

Crash safety and concurrency: the plates of a pin are sealed in chunks (one sealed run per
``StreamSettings.chunk_plates`` plates), so a killed process loses at most the chunk it was
writing and a re-run processes only the plates no chunk sealed. One pin (store key) is worked on
by one run at a time on a home, whatever launched it: the engine holds
``<store>/locks/<store key>.lock`` from planning to the last seal, and plans only once it holds it,
so a second run waits and then reuses what the first sealed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awb_dagster.engine.producer import PinSession, PlateFailure, PlateOutput, Producer, StepInputs
from awb_dagster.instruments.streaming import prefetch_batches
from awb_dagster.locking import hold_lock, lock_file_name
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.store import Manifest, OpenRun, RunStore, SealedPair

SealedIndex = dict[tuple[str, str, str], SealedPair]
LOCKS_DIR = "locks"  # under the store root: one lock file per store key
# Plates sealed per run when StreamSettings.chunk_plates is None: four batches, and at least
# DEFAULT_CHUNK_MIN_PLATES, so per-plate families (batch size 1) do not write a manifest every few
# plates (every manifest is read by reuse and lineage lookups).
DEFAULT_CHUNK_BATCHES = 4
DEFAULT_CHUNK_MIN_PLATES = 64


@dataclass(frozen=True)
class PartitionReport:
    """One partition with a sealed pair: computed by this step, or reused from an earlier run."""

    partition_key: str
    pin_key: str  # the partition's pin dimension key
    pair: SealedPair
    reused: bool
    facts: Mapping[str, Any] | None  # the session's per-plate facts, when computed now


@dataclass
class StepResult:
    reports: list[PartitionReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per plate that has no sealed pair
    sessions: dict[str, PinSession] = field(default_factory=dict)  # by partition pin key
    sealed_runs: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[SealedPair]:
        return [report.pair for report in self.reports]


@dataclass(frozen=True)
class StreamSettings:
    """How plates stream: decode threads and how many batches they may run ahead."""

    workers: int = 4
    prefetch_batches: int = 2
    # Plates per sealed run (a kill loses at most one chunk); None: the default above.
    chunk_plates: int | None = None

    def chunk_size(self, batch_size: int) -> int:
        if self.chunk_plates:
            return max(1, self.chunk_plates)
        return max(DEFAULT_CHUNK_MIN_PLATES, DEFAULT_CHUNK_BATCHES * max(1, batch_size))


def pin_lock_path(store: RunStore, store_key: str) -> Path:
    """The lock file held while a run plans, processes and seals ``store_key``."""
    return store.root / LOCKS_DIR / lock_file_name(store_key)


def plate_metadata(plate: Plate) -> dict[str, Any]:
    """A plate as a run manifest lists it."""
    return {
        "plate_id": plate.plate_id,
        "sha256": plate.sha256,
        "source_paths": list(plate.source_paths),
        "width": plate.width,
        "height": plate.height,
        "format": plate.format,
        "mode": plate.mode,
    }


def run_step(
    producer: Producer,
    settings: Any,
    by_pin: Mapping[str, Sequence[tuple[str, str]]],
    inputs: StepInputs,
    *,
    dagster_run_id: str,
    force: bool = False,
    stream: StreamSettings = StreamSettings(),
    log: Callable[[str], None] = lambda message: None,
) -> StepResult:
    """Run ``producer`` over ``by_pin`` (pin key -> [(partition key, plate id)])."""
    result = StepResult()
    for pin_key, keyed_plates in by_pin.items():
        session = producer.open(pin_key, settings, inputs)
        result.sessions[pin_key] = session
        with _pin_lock(session, inputs.store, log):
            _plan_and_run(
                session, pin_key, keyed_plates, result,
                catalog=inputs.catalog, store=inputs.store, force=force, dagster_run_id=dagster_run_id, stream=stream, log=log,
            )  # fmt: skip
    return result


def _pin_lock(session: PinSession, store: RunStore, log: Callable[[str], None]) -> AbstractContextManager[None]:
    """The pin's lock on this home, held from planning to the last seal; says so while it waits."""
    lock_path = pin_lock_path(store, session.store_key)

    def waiting() -> None:
        log(
            f"{session.store_key}: another run is processing this pin on this home ({lock_path} is held); "
            "waiting for it, then reusing what it sealed"
        )

    return hold_lock(lock_path, on_wait=waiting)


def _plan_and_run(
    session: PinSession,
    pin_key: str,
    keyed_plates: Sequence[tuple[str, str]],
    result: StepResult,
    *,
    catalog: PlateCatalog,
    store: RunStore,
    force: bool,
    dagster_run_id: str,
    stream: StreamSettings,
    log: Callable[[str], None],
) -> None:
    sealed = store.sealed_pairs(session.store_key, plate_ids={plate_id for _, plate_id in keyed_plates})
    todo: list[Plate] = []
    for _, plate_id in keyed_plates:
        plate = catalog.plates.get(plate_id)
        if plate is None:
            result.problems.append(f"{plate_id}: not in the plate catalog {catalog.path}")
            continue
        tag = session.expected_tag(plate)
        if force or tag is None or (plate_id, plate.sha256, tag) not in sealed:
            todo.append(plate)
    log(
        f"{session.store_key}: {len(keyed_plates)} partitions, {len(todo)} to process, "
        f"{len(keyed_plates) - len(todo)} already sealed"
    )
    computed: dict[str, tuple[SealedPair, dict[str, Any]]] = {}
    if todo:
        chunks = _ChunkedRuns(session, store, dagster_run_id, stream.chunk_size(session.batch_size), log)
        _stream(session, chunks, todo, stream, log)
        chunks.seal()
        for failure in chunks.failures:
            result.problems.append(f"{failure.plate.plate_id}: {failure.reason}")
        result.sealed_runs.extend(chunks.sealed_runs)
        computed = chunks.computed
    for key, plate_id in keyed_plates:
        plate = catalog.plates.get(plate_id)
        if plate is None:
            continue
        if plate_id in computed:
            pair, facts = computed[plate_id]
            result.reports.append(PartitionReport(key, pin_key, pair, reused=False, facts=facts))
            continue
        pair = _sealed_pair(sealed, plate, session.expected_tag(plate))
        if pair is not None:
            result.reports.append(PartitionReport(key, pin_key, pair, reused=True, facts=None))


class _ChunkedRuns:
    """The sealed runs of one pin's plates: a run is opened when a chunk starts and sealed once
    it holds ``chunk_plates`` plates (processed or failed), and the last one at :meth:`seal`."""

    def __init__(
        self, session: PinSession, store: RunStore, dagster_run_id: str, chunk_plates: int, log: Callable[[str], None]
    ):
        self.session, self.store, self.dagster_run_id = session, store, dagster_run_id
        self.chunk_plates, self.log = chunk_plates, log
        self.run: OpenRun | None = None
        self.outputs: list[PlateOutput] = []  # of the open chunk
        self.plates_in_chunk = 0
        self.chunk_started = 0.0
        self.failures: list[PlateFailure] = []
        self.sealed_runs: list[str] = []
        self.computed: dict[str, tuple[SealedPair, dict[str, Any]]] = {}

    def current(self) -> OpenRun:
        if self.run is None:
            self.run = _open_run(self.session, self.store, self.dagster_run_id)
            self.chunk_started = time.perf_counter()
        return self.run

    def add_output(self, item: PlateOutput) -> None:
        run = self.current()
        run.add_plate(plate_metadata(item.plate))
        run.add_pair(
            plate_id=item.plate.plate_id,
            plate_sha256=item.plate.sha256,
            pin_key=self.session.store_key,
            preprocess_tag=item.preprocess_tag,
            record_ids=item.record_ids,
            artifact=item.artifact,
        )
        self.outputs.append(item)
        self.plates_in_chunk += 1

    def add_failure(self, failure: PlateFailure) -> None:
        self.current().add_failure(plate_id=failure.plate.plate_id, pin_key=self.session.store_key, reason=failure.reason)
        self.failures.append(failure)
        self.plates_in_chunk += 1

    def batch_done(self) -> None:
        """After a batch: seal the chunk once it is full (a batch is never split between runs)."""
        if self.plates_in_chunk >= self.chunk_plates:
            self.seal()

    def seal(self) -> None:
        if self.run is None:
            return
        run, outputs = self.run, self.outputs
        elapsed = time.perf_counter() - self.chunk_started
        records = sum(len(output.record_ids) for output in outputs)
        run.note(
            "timing",
            {"plates": len(outputs), "records": records, "stream_seconds": round(elapsed, 3),
             "plates_per_second": round(len(outputs) / elapsed, 2) if elapsed > 0 else None},
        )  # fmt: skip
        manifest = run.seal()
        self.sealed_runs.append(manifest.run_id)
        self.computed.update(_computed_pairs(manifest, outputs))
        self.log(f"{self.session.store_key}: sealed run {manifest.run_id} ({len(outputs)} plates) at {manifest.run_dir}")
        self.run, self.outputs, self.plates_in_chunk = None, [], 0


def _open_run(session: PinSession, store: RunStore, dagster_run_id: str) -> OpenRun:
    instrument = session.instrument
    run = store.open_run(
        kind=session.run_kind,
        dagster_run_id=dagster_run_id,
        code_version=session.code_version,
        device=str(instrument.device),
        config={**session.run_config(), "dtype": str(instrument.dtype).removeprefix("torch.")},
    )
    run.add_instrument(instrument.describe())
    return run


def _stream(
    session: PinSession, chunks: _ChunkedRuns, plates: list[Plate], stream: StreamSettings, log: Callable[[str], None]
) -> None:
    started = time.perf_counter()
    processed = records = failed = 0
    batches = prefetch_batches(
        plates, session.prepare, batch_size=session.batch_size, workers=stream.workers,
        prefetch_batches=max(1, stream.prefetch_batches),
    )  # fmt: skip
    for batch in batches:
        good = []
        for slot in batch:
            if slot.error is None:
                good.append((slot.item, slot.value))
            else:  # a bad plate fails its own partition, not the step's others
                chunks.add_failure(PlateFailure(slot.item, f"{type(slot.error).__name__}: {slot.error}"))
                failed += 1
        items = session.process(good, chunks.current()) if good else []
        for item in items:
            if isinstance(item, PlateFailure):
                chunks.add_failure(item)
                failed += 1
                continue
            chunks.add_output(item)
            processed += 1
            records += len(item.record_ids)
        chunks.batch_done()
        elapsed = time.perf_counter() - started
        log(
            f"{session.store_key}: {processed + failed}/{len(plates)} plates, {records} records "
            f"({processed / elapsed:.1f} plates/s)"
        )


def _computed_pairs(manifest: Manifest, outputs: list[PlateOutput]) -> dict[str, tuple[SealedPair, dict[str, Any]]]:
    """The pairs this run sealed, read back from its manifest, with each plate's facts."""
    facts = {output.plate.plate_id: output.facts for output in outputs}
    return {pair["plate_id"]: (manifest.sealed_pair(pair), facts[pair["plate_id"]]) for pair in manifest.pairs}


def _sealed_pair(sealed: SealedIndex, plate: Plate, tag: str | None) -> SealedPair | None:
    """The sealed pair a partition reuses: the one under its expected tag, or (tag unknown
    before processing) the newest for the plate's bytes."""
    if tag is not None:
        return sealed.get((plate.plate_id, plate.sha256, tag))
    candidates = [pair for (pid, sha, _), pair in sealed.items() if pid == plate.plate_id and sha == plate.sha256]
    return max(candidates, key=lambda pair: pair.run_id) if candidates else None
