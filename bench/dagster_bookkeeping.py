"""Dagster's own bookkeeping per partition, per instance kind.

A no-op asset partitioned like the families (``plate`` × ``pin``, two dynamic dimensions,
single-run backfill policy) materializes N plates of one pin in one run; nothing is computed,
so the run's time is Dagster's: planned events, one materialization per partition, run events.
Each instance kind runs at two sizes in a fresh home, and the per-partition cost is the slope
(time(N2) - time(N1)) / (N2 - N1), so fixed costs (run creation, server start) cancel. Times
are from the run's event log (first to last event) and the caller's wall clock.

    .venv/bin/python bench/dagster_bookkeeping.py                       # 100 and 400 partitions
    .venv/bin/python bench/dagster_bookkeeping.py --sizes 200 1000 --kinds embedded-postgres
    .venv/bin/python bench/dagster_bookkeeping.py --variants noop metadata metadata-plain

Variants: ``noop`` attaches nothing; ``metadata`` attaches per-partition metadata the way the
family assets do (about 15 fields each through ``context.add_asset_metadata(partition_key=)``,
awb's PlatePinPartitions, dynamic keys held by the instance); ``metadata-plain`` attaches the
same metadata with Dagster's stock MultiPartitionsDefinition and no held keys (what it costs
without awb's two measures: Dagster re-resolves the whole range on every call).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import dagster as dg

from awb_dagster.instance import INSTANCE_YAML, SQLITE_INSTANCE_YAML, home_instance
from awb_dagster.partitions import PlatePinPartitions
from awb_dagster.paths import REPO_ROOT, HomePaths

KINDS = {"embedded-postgres": INSTANCE_YAML, "sqlite": SQLITE_INSTANCE_YAML}
PLATES = dg.DynamicPartitionsDefinition(name="bench_plate")
PINS = dg.DynamicPartitionsDefinition(name="bench_pin")
PIN = "noop@0000000000"


@dg.asset(
    partitions_def=dg.MultiPartitionsDefinition({"plate": PLATES, "pin": PINS}),
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def noop_embeddings(context) -> None:
    context.log.debug(f"{len(context.partition_keys)} partitions")


def _partition_metadata(key: str) -> dict:
    """Fields shaped like a family partition's provenance (engine/metadata.py)."""
    plate = key.split("|")[-1]
    return {
        "record_id": "0" * 32, "records": 1, "plate_id": plate, "plate_sha256": "a" * 64,
        "model_id": "bench/noop", "model_sha": "b" * 40, "pin": PIN, "license": "apache-2.0",
        "preprocess_tag": "dec=PIL;draft=none;color=rgb-v1;proc=CLIPImageProcessor;" * 4,
        "artifact": dg.MetadataValue.path(f"/store/runs/r/embeddings-{plate}.parquet"),
        "artifact_sha256": "c" * 64, "run_id": "r", "dagster_run_id": "d", "status": "computed",
        "lineage": dg.MetadataValue.md(f"`awb lineage {'0' * 32}`"), "vector_dim": 512,
    }  # fmt: skip


@dg.asset(partitions_def=PlatePinPartitions({"plate": PLATES, "pin": PINS}), backfill_policy=dg.BackfillPolicy.single_run())
def metadata_embeddings(context) -> None:
    with context.instance.dynamic_partitions_held():
        for key in context.partition_keys:
            context.add_asset_metadata(_partition_metadata(key), partition_key=key)


@dg.asset(
    partitions_def=dg.MultiPartitionsDefinition({"plate": PLATES, "pin": PINS}),
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def metadata_plain_embeddings(context) -> None:
    for key in context.partition_keys:
        context.add_asset_metadata(_partition_metadata(key), partition_key=key)


VARIANTS = {"noop": noop_embeddings, "metadata": metadata_embeddings, "metadata-plain": metadata_plain_embeddings}


def measure(kind: str, size: int, variant: str = "noop") -> dict:
    asset = VARIANTS[variant]
    defs = dg.Definitions(assets=[asset], jobs=[dg.define_asset_job("bench", selection=[asset])])
    job = defs.resolve_job_def("bench")
    with tempfile.TemporaryDirectory(prefix="awb-bench-") as root:
        started = time.perf_counter()
        with home_instance(HomePaths(Path(root)), KINDS[kind]) as instance:
            opened_s = time.perf_counter() - started
            plates = [f"plate-{i:05d}" for i in range(size)]
            instance.add_dynamic_partitions(PLATES.name, plates)
            instance.add_dynamic_partitions(PINS.name, [PIN])
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": f"{PIN}|{plates[0]}",
                    "dagster/asset_partition_range_end": f"{PIN}|{plates[-1]}",
                },
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            wall_s = time.perf_counter() - started
            logs = instance.all_logs(result.run_id)
            materialized = sum(1 for e in logs if e.dagster_event and e.dagster_event.is_step_materialization)
            if not result.success or materialized != size:
                raise RuntimeError(f"{kind} at {size}: success={result.success}, {materialized} materializations")
            return {
                "kind": kind,
                "variant": variant,
                "partitions": size,
                "open_s": round(opened_s, 3),
                "wall_s": round(wall_s, 3),
                "event_log_s": round(logs[-1].timestamp - logs[0].timestamp, 3),
                "events": len(logs),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[100, 400])
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=sorted(KINDS))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["noop"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results-cpu" / "dagster_bookkeeping.json")
    args = parser.parse_args()
    small, large = args.sizes
    rows, summary = [], []
    measure(args.kinds[0], 10)  # warm-up: imports and first-run caches out of the figures
    for kind, variant in [(kind, variant) for kind in args.kinds for variant in args.variants]:
        first, second = measure(kind, small, variant), measure(kind, large, variant)
        rows += [first, second]
        summary.append(
            {
                "kind": kind,
                "variant": variant,
                "ms_per_partition_wall": round(1000 * (second["wall_s"] - first["wall_s"]) / (large - small), 2),
                "ms_per_partition_event_log": round(
                    1000 * (second["event_log_s"] - first["event_log_s"]) / (large - small), 2
                ),
                # all of the larger run's time, fixed costs included: an upper bound
                "ms_per_partition_upper_bound": round(1000 * second["wall_s"] / large, 2),
                "open_s": first["open_s"],
            }
        )
    report = {"machine": platform.platform(), "cpus": __import__("os").cpu_count(), "runs": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'kind':<18} {'variant':<15} {'partitions':>10} {'wall s':>8} {'event log s':>12} {'events':>7}")
    for r in rows:
        print(f"{r['kind']:<18} {r['variant']:<15} {r['partitions']:>10} {r['wall_s']:>8} {r['event_log_s']:>12} {r['events']:>7}")
    print(f"\n{'kind':<18} {'variant':<15} {'ms/partition (slope, wall)':>27} {'(slope, event log)':>19} {'(upper bound)':>14} {'open s':>7}")
    for s in summary:
        print(
            f"{s['kind']:<18} {s['variant']:<15} {s['ms_per_partition_wall']:>27} {s['ms_per_partition_event_log']:>19} "
            f"{s['ms_per_partition_upper_bound']:>14} {s['open_s']:>7}"
        )
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
