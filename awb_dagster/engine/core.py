"""The plate × pin loop, once for every family (DESIGN.md §1, "One engine, many producers").

Per pin of a step: load the instrument once (the producer's session), split the step's plates
into sealed pairs (reused unless forced) and plates to process, open one sealed run, stream the
plates through the session (per-plate work in decode threads, overlapped with the model),
seal, and report every partition that has a sealed pair with its provenance. A plate that
fails is named in ``problems`` and in the run's manifest; the other plates stay sealed, so a
retry processes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from awb_dagster.engine.producer import PinSession, PlateFailure, PlateOutput, Producer, StepInputs
from awb_dagster.instruments.streaming import prefetch_batches
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.store import Manifest, OpenRun, RunStore, SealedPair

SealedIndex = dict[tuple[str, str, str], SealedPair]


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
        _run_pin(
            session, pin_key, keyed_plates, result,
            catalog=inputs.catalog, store=inputs.store, force=force, dagster_run_id=dagster_run_id, stream=stream, log=log,
        )  # fmt: skip
    return result


def _run_pin(
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
    sealed = store.sealed_pairs(session.store_key)
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
        run = _open_run(session, store, dagster_run_id)
        outputs, failures = _stream(session, run, todo, stream, log)
        for failure in failures:
            result.problems.append(f"{failure.plate.plate_id}: {failure.reason}")
            run.add_failure(plate_id=failure.plate.plate_id, pin_key=session.store_key, reason=failure.reason)
        manifest = run.seal()
        result.sealed_runs.append(manifest.run_id)
        log(f"{session.store_key}: sealed run {manifest.run_id} at {manifest.run_dir}")
        computed = _computed_pairs(manifest, outputs)
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
    session: PinSession, run: OpenRun, plates: list[Plate], stream: StreamSettings, log: Callable[[str], None]
) -> tuple[list[PlateOutput], list[PlateFailure]]:
    outputs: list[PlateOutput] = []
    failures: list[PlateFailure] = []
    started = time.perf_counter()
    records = 0
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
                failures.append(PlateFailure(slot.item, f"{type(slot.error).__name__}: {slot.error}"))
        if not good:
            continue
        for item in session.process(good, run):
            if isinstance(item, PlateFailure):
                failures.append(item)
                continue
            run.add_plate(plate_metadata(item.plate))
            run.add_pair(
                plate_id=item.plate.plate_id,
                plate_sha256=item.plate.sha256,
                pin_key=session.store_key,
                preprocess_tag=item.preprocess_tag,
                record_ids=item.record_ids,
                artifact=item.artifact,
            )
            outputs.append(item)
            records += len(item.record_ids)
        elapsed = time.perf_counter() - started
        log(
            f"{session.store_key}: {len(outputs) + len(failures)}/{len(plates)} plates, {records} records "
            f"({len(outputs) / elapsed:.1f} plates/s)"
        )
    elapsed = time.perf_counter() - started
    run.note(
        "timing",
        {"plates": len(outputs), "records": records, "stream_seconds": round(elapsed, 3),
         "plates_per_second": round(len(outputs) / elapsed, 2) if elapsed > 0 else None},
    )  # fmt: skip
    return outputs, failures


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
