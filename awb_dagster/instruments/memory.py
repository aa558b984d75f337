"""Memory refusal (issue 11): an instrument whose roster row declares ``min_memory_gb`` runs only on
a device with at least that much free memory, checked before anything is loaded. No Dagster here.

``min_memory_gb`` is declared for 16-bit weights (bfloat16/float16, the CUDA default); a float32 run
(the CPU default) needs twice as much, and the refusal says so.

Free memory is what the device reports now: ``torch.cuda.mem_get_info`` for a CUDA device, the
kernel's ``MemAvailable`` (``/proc/meminfo``) for the CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from awb_dagster.instruments.common import InstrumentError
from awb_dagster.registry.roster import Instrument

GIB = 1024**3


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # e.g. "cuda:0 (NVIDIA H200)" or "cpu"
    free_gb: float
    total_gb: float


def device_memory(device: torch.device) -> DeviceMemory:
    """Free and total memory of ``device`` in GiB, as the device reports them now."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return DeviceMemory(f"cuda:{index} ({torch.cuda.get_device_name(index)})", free / GIB, total / GIB)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = Path("/proc/meminfo")
    available = [line for line in meminfo.read_text(encoding="ascii").splitlines() if line.startswith("MemAvailable:")] if meminfo.exists() else []
    if not available:  # not Linux: the physical total stands for what is free, and the device name says so
        return DeviceMemory(f"{device} (free memory unknown here: physical total)", total / GIB, total / GIB)
    free = int(available[0].split()[1]) * 1024
    return DeviceMemory(str(device), free / GIB, total / GIB)


def required_gb(instrument: Instrument, dtype: torch.dtype) -> float | None:
    """The free memory ``instrument`` needs at ``dtype``: its ``min_memory_gb`` scaled from 16-bit."""
    if instrument.min_memory_gb is None:
        return None
    return instrument.min_memory_gb * max(1.0, dtype.itemsize / 2)


def require_memory(instrument: Instrument, device: torch.device, dtype: torch.dtype) -> DeviceMemory | None:
    """Refuse (``InstrumentError``) when ``instrument`` declares ``min_memory_gb`` and ``device`` has
    less free memory than it needs at ``dtype``; call it before loading any weights. The device's
    memory when checked (None when the row declares no need)."""
    need = required_gb(instrument, dtype)
    if need is None:
        return None
    memory = device_memory(device)
    if memory.free_gb < need:
        at = str(dtype).removeprefix("torch.")
        raise InstrumentError(
            f"{instrument.id} needs {need:g} GiB of free device memory at {at} (roster min_memory_gb "
            f"{instrument.min_memory_gb:g} for 16-bit weights) but "
            f"device {memory.device} has {memory.free_gb:.1f} GiB free of {memory.total_gb:.1f} GiB; nothing was loaded. "
            "Run it on a device with more memory (TorchResource device, e.g. AWB_DEVICE=cuda:1) or pick a smaller model."
        )
    return memory
