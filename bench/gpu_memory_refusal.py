"""Memory refusal (instruments/memory.py) against the device's real free memory: the Qwen2-VL rows
of the roster checked with ``require_memory`` on --device, as a captioner does before it loads
anything. Loads no weights.

    python bench/gpu_memory_refusal.py --device cuda --out OUT/gpu_memory_refusal.json

One line per (model, dtype): the roster's min_memory_gb, what is needed at that dtype, the free
memory the device reports, and ACCEPTED or the refusal message. Exit 1 when a verdict disagrees
with free >= needed (the check itself misbehaving); on one H200 (about 140 GiB) the 72B row
(160 GiB at bfloat16) is expected refused and the 7B row (20 GiB) accepted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("Qwen/Qwen2-VL-72B-Instruct", "Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-2B-Instruct")
DTYPES = ("bfloat16", "float32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    parser.add_argument("--out", help="JSON of the verdicts")
    args = parser.parse_args(argv)
    import torch

    from awb_dagster.instruments.common import InstrumentError
    from awb_dagster.instruments.memory import device_memory, require_memory, required_gb
    from awb_dagster.registry.model import Registry

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    memory = device_memory(device)
    print(f"device {memory.device}: {memory.free_gb:.1f} GiB free of {memory.total_gb:.1f} GiB")
    registry = Registry.load()
    rows, wrong = [], []
    for model in MODELS:
        instrument = registry.get(model).instrument
        for dtype_name in DTYPES:
            dtype = getattr(torch, dtype_name)
            need = required_gb(instrument, dtype)
            try:
                checked = require_memory(instrument, device, dtype)
                verdict, message, free = "ACCEPTED", "", checked.free_gb
            except InstrumentError as exc:
                verdict, message, free = "REFUSED", str(exc), device_memory(device).free_gb
            consistent = (verdict == "ACCEPTED") == (free >= need)
            if not consistent:
                wrong.append(f"{model} {dtype_name}")
            rows.append({"model": model, "dtype": dtype_name, "min_memory_gb": instrument.min_memory_gb, "need_gb": need,
                         "free_gb": round(free, 2), "verdict": verdict, "message": message, "consistent": consistent})  # fmt: skip
            print(f"{verdict:8s} {model:28s} {dtype_name:8s} need {need:5.0f} GiB, free {free:6.1f} GiB"
                  + (f"\n         {message}" if message else "") + ("" if consistent else "  <- INCONSISTENT"))  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": memory.device, "free_gb": memory.free_gb, "total_gb": memory.total_gb, "checks": rows}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    if wrong:
        print(f"verdicts inconsistent with the free memory: {', '.join(wrong)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
