"""Materialize family assets through Dagster from the command line, as few runs as the
partition order allows (one run per contiguous range of plates for one pin).

These runs execute in the calling process, so the daemon's run monitoring cannot see their
worker die. Each run is tagged with its process (``awb/host``, ``awb/pid``, ``awb/pid_started``)
and, before running, ``fail_runs_of_dead_processes`` (awb_dagster/instance.py) marks the runs of
processes that are gone failed and frees their ``gpu`` pool slots: a ``kill -9`` never wedges
the home.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from awb_dagster.assets.factory import job_name
from awb_dagster.constants import GPU_POOL, PIN_DIMENSION, PLATE_DIMENSION, PLATES_PARTITIONS_NAME
from awb_dagster.instance import fail_runs_of_dead_processes, process_tags


class SignalStop:
    """SIGINT or SIGTERM received while :func:`stop_on_signals` is active. Dagster installs its
    own handlers while a run executes (and turns the signal into a failed run), so signals are
    also read from the wakeup fd, which the interpreter writes whichever Python handler runs."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._wakeup: socket.socket | None = None

    def raise_if_requested(self) -> None:
        if self._wakeup is not None:
            try:
                received = self._wakeup.recv(512)
            except BlockingIOError:
                received = b""
            for signum in received:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self.signal_name = signal.Signals(signum).name
        if self.signal_name is not None:
            raise KeyboardInterrupt(self.signal_name)


signal_stop = SignalStop()


@contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """SIGINT and SIGTERM interrupt the run in progress (Dagster marks it failed and frees its
    slot; the chunks already sealed stay) and stop before the next one. Main thread only."""

    def interrupt(signum: int, frame: object) -> None:
        signal_stop.signal_name = signal.Signals(signum).name
        raise KeyboardInterrupt(signal_stop.signal_name)

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal_stop.signal_name, signal_stop._wakeup = None, reader
    previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signal_stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_wakeup)
        signal_stop._wakeup = None
        reader.close()
        writer.close()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_pool_slot(
    instance: dg.DagsterInstance, pool: str = GPU_POOL, *, poll_seconds: float = 1.0, say: Callable[[str], None] = _say
) -> None:
    """Return once ``pool`` has a free slot. Dagster's own wait for a slot, inside a run, ignores
    SIGINT and SIGTERM and says nothing; this one names the runs holding the slots, stops on a
    signal, and frees the slots of runs whose process died while it waits. (Another run may
    still take the slot between this check and the run's claim: Dagster then waits.)"""
    told: set[str] = set()
    while True:
        info = instance.event_log_storage.get_concurrency_info(pool)
        holders = sorted(info.active_run_ids | info.assigned_run_ids)  # slots claimed, or assigned to a waiting step
        if len(holders) < info.slot_count or not info.slot_count:
            return
        if not told.issuperset(holders):
            say(f"waiting for a `{pool}` slot, held by dagster run(s) {', '.join(holders)} (Ctrl-C stops)")
            told.update(holders)
        fail_runs_of_dead_processes(instance)
        signal_stop.raise_if_requested()
        time.sleep(poll_seconds)


@dataclass(frozen=True)
class RangeRun:
    pin_key: str
    plate_ids: tuple[str, ...]
    dagster_run_id: str
    success: bool


def contiguous_ranges(ordered: Sequence[str], chosen: Sequence[str]) -> list[list[str]]:
    """Split ``chosen`` into runs of keys that are adjacent in ``ordered``."""
    wanted = set(chosen)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted:
            current.append(key)
        elif current:
            ranges.append(current)
            current = []
    if current:
        ranges.append(current)
    return ranges


def _multi_key(pin_key: str, plate_id: str) -> str:
    return str(dg.MultiPartitionKey({PIN_DIMENSION: pin_key, PLATE_DIMENSION: plate_id}))


def materialize_family(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    family: str,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    force: bool = False,
    log_level: str = "INFO",
    on_run: Callable[[RangeRun], None] | None = None,
) -> list[RangeRun]:
    """Run ``<family>_embeddings`` for one pin over ``plate_ids`` (default: all plates)."""
    return materialize_pin_ranges(
        defs, instance, job_name(f"{family}_embeddings"), f"{family}_embeddings", {"force": force}, pin_key, plate_ids,
        log_level=log_level, on_run=on_run,
    )  # fmt: skip


def materialize_masks(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``sam_masks`` for one SAM pin over ``plate_ids`` (default: all plates); ``config`` is
    the asset's run config (generator settings, ``force``)."""
    return materialize_pin_ranges(
        defs, instance, job_name("sam_masks"), "sam_masks", config or {}, pin_key, plate_ids, log_level=log_level
    )


def materialize_semantic(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``semantic_segmentation`` for one Mask2Former pin over ``plate_ids`` (default: all
    plates); ``config`` is the asset's run config (``force``, ``max_label_side``)."""
    return materialize_pin_ranges(
        defs, instance, job_name("semantic_segmentation"), "semantic_segmentation", config or {}, pin_key, plate_ids, log_level=log_level
    )


def materialize_regions(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    scope: str,
    key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    config: dict | None = None,
    log_level: str = "INFO",
) -> list[RangeRun]:
    """Run ``segment_embeddings`` (``key`` = ``<embedding pin>~<sam pin>``) or ``tile_embeddings``
    (``key`` = an embedding pin) over ``plate_ids`` (default: all plates); ``config`` is the
    asset's run config (crop policy or tiling, ``force``)."""
    asset = {"segment": "segment_embeddings", "tile": "tile_embeddings"}[scope]
    return materialize_pin_ranges(defs, instance, job_name(asset), asset, config or {}, key, plate_ids, log_level=log_level)


def materialize_pin_ranges(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    op_name: str,
    op_config: dict,
    pin_key: str,
    plate_ids: Sequence[str] | None = None,
    *,
    log_level: str = "INFO",
    on_run: Callable[[RangeRun], None] | None = None,
) -> list[RangeRun]:
    """Run the plate × pin asset behind ``job_name`` for one pin, one run per contiguous plate range."""
    ordered = instance.get_dynamic_partitions(PLATES_PARTITIONS_NAME)
    unknown = sorted(set(plate_ids or ()) - set(ordered))
    if unknown:
        raise ValueError(f"not registered plates: {', '.join(unknown)} (register with `awb plates add DIR`)")
    job = defs.resolve_job_def(job_name)
    fail_runs_of_dead_processes(instance)
    results = []
    for plates in contiguous_ranges(ordered, plate_ids or ordered):
        signal_stop.raise_if_requested()
        wait_for_pool_slot(instance)  # every family asset runs in the gpu pool
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": _multi_key(pin_key, plates[0]),
                "dagster/asset_partition_range_end": _multi_key(pin_key, plates[-1]),
                **process_tags(),
            },
            run_config={
                "ops": {op_name: {"config": op_config}},
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            raise_on_error=False,
        )
        signal_stop.raise_if_requested()  # Dagster marked the run failed; stop before the next range
        run = RangeRun(pin_key, tuple(plates), result.run_id, result.success)
        results.append(run)
        if on_run:
            on_run(run)
    return results


ATLAS_ASSET_NAMES = ("atlas", "ensemble_disagreement", "topology_report")


def materialize_atlas(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    config: dict[str, dict] | None = None,
    *,
    assets: Sequence[str] = ATLAS_ASSET_NAMES,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """Materialize ``atlas``, ``ensemble_disagreement`` and ``topology_report`` (or the named
    ones of them) in one run; ``config`` maps an asset name to its config (``{"atlas": {"k": 3}}``)."""
    fail_runs_of_dead_processes(instance)
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        tags=process_tags(),
        asset_selection=[dg.AssetKey(name) for name in assets],
        run_config={
            "ops": {name: {"config": settings} for name, settings in (config or {}).items()},
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        raise_on_error=False,
    )
