"""A tiny U^2-Net checkpoint in the published layout of ``Carve/u2net-universal``: one file,
``full_weights.pth``, a legacy (non-zip) ``torch.save`` pickle of a plain ``OrderedDict`` state
dict of float tensors, keys as carvekit's ``U2NETArchitecture`` names them. The real file holds
no BatchNorm ``num_batches_tracked`` buffers (its pickle imports only ``FloatStorage``; a full
state dict saved that way is 176,263,754 bytes, the size the hub lists), so neither does this one.
The architecture is carvekit's class with its tiny layer dict (:data:`TINY_LAYERS`: the same
eleven stages and module names, 4/8 channels). Random weights: its masks carry no meaning.

The legacy format names each storage by its memory address; :func:`legacy_state_dict_bytes`
renames them by rank, so the same seed gives the same bytes (and the same demo commit sha)."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from collections import OrderedDict

U2NET_WEIGHT_FILE = "full_weights.pth"


def tiny_u2net_files() -> dict[str, bytes]:
    """The repo's files (name -> bytes), deterministic under the caller's torch seed."""
    import torch

    from awb_dagster.instruments.u2net import TINY_LAYERS, u2net_architecture

    model = u2net_architecture(TINY_LAYERS)
    state = OrderedDict((k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    return {U2NET_WEIGHT_FILE: legacy_state_dict_bytes(state)}


def legacy_state_dict_bytes(state: OrderedDict) -> bytes:
    """``torch.save(state, _use_new_zipfile_serialization=False)``, made deterministic: the legacy
    format keys each storage by its memory address and writes the storages in the order of those
    keys; here the keys become 0, 1, ... in the order the state dict first names them, and the
    storages follow in that order (float32 storages only, as in the real file)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    reader = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, sys info
        pickle.load(reader)
    named: list[str] = []
    for opcode, argument, _ in pickletools.genops(reader):  # walked over, not run
        if opcode.name == "BINUNICODE" and argument not in named:
            named.append(argument)
    header_end = reader.tell()
    keys = pickle.load(reader)  # storage keys, in the order their storages follow
    storages, offset = {}, reader.tell()
    for key in keys:
        (numel,) = struct.unpack("<q", data[offset : offset + 8])
        storages[key], offset = data[offset : offset + 8 + 4 * numel], offset + 8 + 4 * numel
    if offset != len(data):
        raise ValueError(f"legacy state dict: {len(data) - offset} bytes after the last float32 storage")
    order = [name for name in named if name in storages]
    header = data[:header_end]
    for rank, key in enumerate(order):
        old, new = key.encode(), str(rank).encode()
        header = header.replace(b"X" + struct.pack("<I", len(old)) + old, b"X" + struct.pack("<I", len(new)) + new)
    new_keys = pickle.dumps([str(rank) for rank in range(len(order))], protocol=2)
    return header + new_keys + b"".join(storages[key] for key in order)
