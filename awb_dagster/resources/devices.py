"""Device leases: on a machine with several GPUs, each run of a family asset claims one card.

Sharded backfills (``AWB_MAX_PARTITIONS_PER_RUN``) start several runs of one pin at once; with
``device`` left at ``auto`` (or ``cuda``) every one of them would load its model on the current
card, ``cuda:0``. So a run first claims a card: an exclusive ``flock`` on
``<home>/devices/cuda-N.lease``, tried card by card. The kernel drops the lock when the holding
process ends, however it ends, so a crashed run never leaves a card claimed. The lease file says
which Dagster run holds it (for people; the lock, not the text, is the claim). The claimed card
becomes the step's torch device, so the run's sealed manifest names it (``device: cuda:N``).

An explicit ``cuda:N`` (``AWB_DEVICE``) is used as given, shared with any other run configured
the same way, and ``cpu`` or a single visible card need no lease. The ``gpu`` pool of the
instance still bounds how many family steps run at once: set it to the number of cards.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LEASE_DIR = "devices"
LEASED_SETTINGS = ("auto", "cuda")  # device settings that let awb choose the card
POLL_S = 2.0


class DeviceLeaseError(RuntimeError):
    """No card could be claimed in time."""


def lease_path(lease_dir: Path, device: str) -> Path:
    return lease_dir / f"{device.replace(':', '-')}.lease"


def _try_lock(path: Path, owner: str) -> IO[str] | None:
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lease's lifetime)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{owner} pid={os.getpid()}\n")
    handle.flush()
    return handle


@contextmanager
def claim_device(
    lease_dir: Path,
    devices: Sequence[str],
    owner: str,
    *,
    timeout_s: float = 24 * 3600,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Hold the first free device of ``devices`` until the block ends; when all are held, try
    again every few seconds until ``timeout_s`` (a queued run waits for a card, as it would for
    a pool slot), then fail naming the lease files and their holders."""
    if not devices:
        raise DeviceLeaseError("no device to claim: the list of devices is empty")
    lease_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        for device in devices:
            handle = _try_lock(lease_path(lease_dir, device), owner)
            if handle is not None:
                try:
                    yield device
                finally:
                    handle.close()  # closing the descriptor releases the flock
                return
        if time.monotonic() >= deadline:
            holders = "; ".join(
                f"{lease_path(lease_dir, d)}: {lease_path(lease_dir, d).read_text().strip() or '?'}" for d in devices
            )
            raise DeviceLeaseError(
                f"{owner}: every device is leased after {timeout_s:.0f} s ({holders}); wait for those runs, "
                "or lower the `gpu` pool limit to the number of cards so runs queue in Dagster instead"
            )
        if not waited and on_wait is not None:
            on_wait(f"{owner}: all of {', '.join(devices)} are leased (in {lease_dir}); waiting for one")
        waited = True
        time.sleep(POLL_S)


def leased_devices(setting: str, cuda_count: int) -> list[str]:
    """The cards a run with device ``setting`` chooses among: every visible card for ``auto`` or
    ``cuda`` when there are two or more, else none (the setting is used as it is)."""
    if setting in LEASED_SETTINGS and cuda_count > 1:
        return [f"cuda:{index}" for index in range(cuda_count)]
    return []


def visible_cuda_count() -> int:
    import torch  # the resources that load models import torch anyway; here only on use

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def step_resources(home, instruments, torch_settings, owner: str, log: Callable[[str], None]) -> Iterator[tuple]:
    """``(instruments, torch_settings)`` for one step: as given, or, when several cards are
    visible and the device is ``auto``/``cuda``, copies placed on a leased card for as long as
    the step runs."""
    devices = leased_devices(torch_settings.device, visible_cuda_count())
    if not devices:
        yield instruments, torch_settings
        return
    with claim_device(home.paths.root / LEASE_DIR, devices, owner, on_wait=log) as device:
        log(f"{owner}: leased {device} ({lease_path(home.paths.root / LEASE_DIR, device)})")
        placed = torch_settings.model_copy(update={"device": device})
        yield instruments.model_copy(update={"torch": placed}), placed
