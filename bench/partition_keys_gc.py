"""What Python's garbage collector adds to Dagster's plate × pin partition keys, by corpus size.

An automation tick over a family asset builds every ``MultiPartitionKey`` of plate × pin
(``MultiPartitionsDefinition.get_partition_keys``: per key, a str subclass holding a list of two
``PartitionDimensionKey`` tuples, each argument checked), twice per tick (``missing()`` and the
cursor). This times that construction alone, for N plates and one pin, with the collector on (as
in any Dagster process) and off, the CPU seconds of the fastest of three, in a process that also
holds N catalog-like entries (as the code server holds the plate catalog). No database, no
Dagster instance: static dimensions with the same keys as the dynamic ones.

    .venv/bin/python bench/partition_keys_gc.py --sizes 10000 30000 100000 300000 \\
        --out bench/results-cpu/partition_keys_gc.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import dagster as dg

PIN = "demo-tiny-dinov2@a3b92a7b96"


def build_keys(size: int, collector: bool) -> float:
    """CPU seconds to list the N plate × 1 pin keys, collector on or off."""
    plates = dg.StaticPartitionsDefinition([f"plate_{index:07d}" for index in range(size)])
    partitions = dg.MultiPartitionsDefinition({"plate": plates, "pin": dg.StaticPartitionsDefinition([PIN])})
    catalog = [{"plate_id": f"plate_{index:07d}", "sha256": f"{index:064x}"} for index in range(size)]
    gc.collect()
    if not collector:
        gc.disable()
    try:
        start = time.process_time()
        keys = partitions.get_partition_keys()
        seconds = time.process_time() - start
    finally:
        gc.enable()
    assert len(keys) == size and len(catalog) == size
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000, 300000])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict = {"host": platform.node(), "command": " ".join(["bench/partition_keys_gc.py", *sys.argv[1:]]), "sizes": {}}
    print(f"{'plates':>8} {'gc on s':>9} {'us/key':>7} {'gc off s':>9} {'us/key':>7}")
    for size in args.sizes:
        on = min(build_keys(size, True) for _ in range(3))
        off = min(build_keys(size, False) for _ in range(3))
        results["sizes"][size] = {"gc_on_cpu": on, "gc_off_cpu": off}
        print(f"{size:>8} {on:9.3f} {on / size * 1e6:7.2f} {off:9.3f} {off / size * 1e6:7.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
