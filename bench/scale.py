"""How the bookkeeping grows with the corpus: N small synthetic plates, one pin.

For each size N, in a fresh home (embedded PostgreSQL instance, tiny DINOv2 pinned from a
loopback hub), it times:

- ``plates_add``: ``awb plates add DIR`` over N new 8x8 PNG plates (scan, sha256, catalog save,
  partition registration); ``plates_add_again``: the same with nothing changed;
- ``partition_sync``: ``sync_partitions`` with every key already known (what the plate sensor
  does on each tick);
- ``automation_tick``: one ``evaluate_automation_conditions`` of the family asset after a cron
  tick, with no partition materialized yet (it requests all N);
- ``sealed_pairs``: ``RunStore.sealed_pairs(pin)``, every sealed pair of the pin, over synthetic
  sealed runs of 1,000 plates each covering all N plates; ``sealed_pairs_step``: the lookup a
  step does to reuse sealed pairs, for its own 64 plates (``plate_ids=``);
- ``find_record`` and ``lineage``: one record of the last run (``awb lineage``'s work);
- ``index_rebuild``: the store's index (``<store>/index.sqlite``) built anew from every manifest,
  what a lookup does once when the index is missing or damaged. The lookups above go through the
  index, kept up by each sealing, and read only the manifests of the runs they return.

Each figure is one measurement in seconds (lookups: the fastest of three) after the setup of
that size; divided by N, a row that grows worse than linearly shows a rising per-plate figure.
The store's rows also give ``<row>_cpu``, this process's CPU seconds: on shared cores the wall
time of a 100k run can double with the neighbours' load, its CPU time much less.
- ``graphql_partitions`` (with ``--graphql``): the query behind the asset's partitions page
  (partition keys by dimension and the materialization status ranges), sent to a
  ``dagster-webserver`` started for the home; ``graphql_partitions_first`` is the first call,
  ``graphql_partitions_server_cpu`` the webserver's CPU seconds per warm call.

    .venv/bin/python bench/scale.py --sizes 1000 10000
    .venv/bin/python bench/scale.py --sizes 10000 100000 --out bench/results-cpu/scale.json

``--only tick graphql`` times only those rows after the setup (plates add, which is timed too),
``--tick-repeats 3`` adds ``automation_tick_best``, the fastest of three more ticks with the same
cursor (and its CPU seconds), the garbage collector's CPU seconds and full passes during one more
(``automation_tick_gc_cpu``, ``automation_tick_gc_full``) and the fastest of three with the
collector off (``automation_tick_nogc``); ``--profile DIR`` writes ``DIR/automation_tick-<N>.prof``,
a cProfile of one more tick in this process's CPU seconds:

    .venv/bin/python bench/scale.py --sizes 10000 30000 100000 --only tick graphql --tick-repeats 3 \
        --profile /tmp/scale-prof --out bench/results-cpu/scale-tick-graphql-3sizes.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from PIL import Image

from awb_dagster.assets.plates import sync_partitions
from awb_dagster.cli import main
from awb_dagster.definitions import build_definitions
from awb_dagster.demo import LoopbackHub, build_tiny_repo
from awb_dagster.demo.checkpoints import DEMO_LICENSE, DEMO_PIPELINE_TAGS
from awb_dagster.instance import dagster_env, home_instance
from awb_dagster.paths import REPO_ROOT, HomePaths
from awb_dagster.provenance.lineage import lineage
from awb_dagster.registry.lock import PinLock
from awb_dagster.resources import AwbHome

MODEL, KIND, ASSET = "awb-demo/tiny-dinov2", "dinov2", "dinov2_embeddings"
RUN_PLATES = 1000  # plates per synthetic sealed run
STEP_PLATES = 64  # plates of one shard (deploy/k8s: AWB_MAX_PARTITIONS_PER_RUN=64)
LOOKUP_REPEATS = 3  # lookups (sync, sealed pairs, find_record, lineage): the fastest of three


CPU_SECONDS: dict[str, float] = {}  # of the last timed call: this process's CPU time, fastest of its repeats


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls (seconds) and the last call's value; the fastest call's
    CPU time of this process goes to ``CPU_SECONDS["last"]``."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    CPU_SECONDS["last"] = best_cpu
    return best, value


def timed_cpu(figures: dict[str, float], name: str, fn: Callable[[], Any], repeats: int) -> Any:
    """``timed`` into ``figures[name]``, and its CPU seconds into ``figures[name + "_cpu"]``: for the
    store's lookups, which run in this process only, the figure that shared cores disturb least."""
    figures[name], value = timed(fn, repeats)
    figures[f"{name}_cpu"] = CPU_SECONDS["last"]
    return value


def write_plates(folder: Path, count: int) -> None:
    """``count`` distinct 8x8 RGB PNGs (the index is in the pixels, so every sha256 differs)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for index in range(count):
        pixels = base.copy()
        pixels[0, :4, 0] = np.frombuffer(index.to_bytes(4, "big"), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"plate_{index:07d}.png", optimize=False)


def seal_synthetic_runs(home: AwbHome, pin_key: str) -> str:
    """Sealed runs of RUN_PLATES plates each over the whole catalog; returns the last record id."""
    store, catalog = home.store(), home.catalog()
    plates = sorted(catalog.plates.values(), key=lambda plate: plate.plate_id)
    record_id = ""
    for start in range(0, len(plates), RUN_PLATES):
        chunk = plates[start : start + RUN_PLATES]
        run = store.open_run(kind="bench-scale", device="cpu")
        pin = PinLock.load(home.paths.lock).find_key(pin_key)
        run.add_instrument(
            {"pin_key": pin_key, "model_id": MODEL, "sha": pin.sha, "license": DEMO_LICENSE, "failure_modes": []}
        )
        ids = [f"bench-{plate.sha256[:24]}" for plate in chunk]
        table = pa.table(
            {
                "record_id": ids,
                "plate_id": [plate.plate_id for plate in chunk],
                "pin_key": [pin_key] * len(chunk),
                "vector_dim": [4] * len(chunk),
            }
        )
        artifact = run.write_table("records", table)
        for plate, rid in zip(chunk, ids, strict=True):
            run.add_plate(plate.to_json())
            run.add_pair(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, pin_key=pin_key,
                preprocess_tag="bench", record_ids=[rid], artifact=artifact,
            )  # fmt: skip
        run.seal()
        record_id = ids[-1]
    return record_id


PARTITIONS_PAGE = """
query Partitions($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode {
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on MultiPartitionStatuses { primaryDimensionName ranges { primaryDimStartKey primaryDimEndKey } }
      }
    }
  }
}"""
LOADED = "{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError { __typename } } } } }"


def graphql(port: int, query: str, **variables: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


def session_cpu(session: int) -> float:
    """CPU seconds (user and system) of the live processes of ``session``, from Linux's /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_graphql(home_dir: Path, endpoint: str, log_path: Path) -> dict[str, float]:
    """Start dagster-webserver for the home, wait for the code location, time the partitions page."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**dagster_env(HomePaths(home_dir)), "HF_ENDPOINT": endpoint}
    webserver = Path(sys.executable).parent / "dagster-webserver"
    command = [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO_ROOT / "workspace.yaml")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster-webserver did not serve the code location; see {log_path}")
            try:
                entries = graphql(port, LOADED)["workspaceOrError"]["locationEntries"]
                if entries and (entries[0]["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation":
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(2)
        figures: dict[str, float] = {}
        figures["graphql_partitions_first"], data = timed(lambda: graphql(port, PARTITIONS_PAGE, path=[ASSET]))
        node = data["assetNodeOrError"]
        assert node["__typename"] == "AssetNode", node
        cpu_before = session_cpu(process.pid)
        figures["graphql_partitions"], _ = timed(lambda: graphql(port, PARTITIONS_PAGE, path=[ASSET]), LOOKUP_REPEATS)
        # The webserver's (and its code server's) CPU seconds per warm query, the mean of the repeats.
        figures["graphql_partitions_server_cpu"] = (session_cpu(process.pid) - cpu_before) / LOOKUP_REPEATS
        return figures
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


ROWS = ("tick", "store", "graphql")  # --only: the automation tick, the store's lookups, the partitions page


def measure(
    size: int,
    root: Path,
    endpoint: str,
    with_graphql: bool = False,
    rows: tuple[str, ...] = ("tick", "store"),
    tick_repeats: int = 0,
    profile_dir: Path | None = None,
) -> dict[str, float]:
    home_dir, plates_dir = root / "home", root / "plates"
    write_plates(plates_dir, size)
    home_args = ["--home", str(home_dir)]
    assert main(["pin", MODEL, "--endpoint", endpoint, *home_args]) == 0
    figures: dict[str, float] = {}
    figures["plates_add"], code = timed(lambda: main(["plates", "add", str(plates_dir), *home_args]))
    assert code == 0
    figures["plates_add_again"], _ = timed(lambda: main(["plates", "add", str(plates_dir), *home_args]))
    home = AwbHome(home=str(home_dir))
    pin_key = PinLock.load(home.paths.lock).pins_for(MODEL)[-1].key
    with home_instance(HomePaths(home_dir)) as instance:
        figures["partition_sync"], added = timed(lambda: sync_partitions(instance, home), LOOKUP_REPEATS)
        assert not added, added
        if "tick" in rows:
            figures.update(measure_tick(instance, home_dir, endpoint, size, tick_repeats, profile_dir))
    if "store" in rows:
        figures.update(measure_store(home, pin_key, size))
    if with_graphql or "graphql" in rows:
        figures.update(measure_graphql(home_dir, endpoint, root / "webserver.log"))
    return figures


def measure_tick(
    instance: dg.DagsterInstance, home_dir: Path, endpoint: str, size: int, repeats: int, profile_dir: Path | None
) -> dict[str, float]:
    """One automation tick after the cron (timed), then ``repeats`` more with the same cursor
    (their fastest), then one under cProfile into ``profile_dir``."""
    figures: dict[str, float] = {}
    defs = build_definitions(home=str(home_dir), endpoint=endpoint)
    # Two evaluations carrying the cursor, before and after the nightly 02:00 UTC cron tick:
    # the first only starts the cursor, the second is the tick that requests (timed).
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    selection = dg.AssetSelection.assets(ASSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, evaluation_time=tomorrow + timedelta(hours=1)
        )

        def tick() -> Any:
            return dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=selection,
                evaluation_time=tomorrow + timedelta(hours=2, minutes=5), cursor=before.cursor,
            )  # fmt: skip

        figures["gc_objects"] = len(gc.get_objects())  # what one full pass of the collector walks
        figures["automation_tick"], result = timed(tick)
        figures["automation_requested"] = result.total_requested
        if repeats:
            figures["automation_tick_best"], result = timed(tick, repeats)
            figures["automation_tick_best_cpu"] = CPU_SECONDS["last"]
            assert result.total_requested == size, result.total_requested
            # The cyclic garbage collector's share: its passes during one more tick (CPU seconds,
            # full passes), and the fastest of ``repeats`` ticks with it switched off.
            clock = GcClock()
            gc.callbacks.append(clock)
            try:
                timed(tick)
            finally:
                gc.callbacks.remove(clock)
            figures["automation_tick_gc_cpu"], figures["automation_tick_gc_full"] = clock.seconds, clock.full
            gc.collect()
            gc.disable()
            try:
                figures["automation_tick_nogc"], _ = timed(tick, repeats)
                figures["automation_tick_nogc_cpu"] = CPU_SECONDS["last"]
            finally:
                gc.enable()
        if profile_dir is not None:  # CPU time of this process: the neighbours' load does not move it
            profile_dir.mkdir(parents=True, exist_ok=True)
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(tick)
            profiler.dump_stats(profile_dir / f"automation_tick-{size}.prof")
    return figures


class GcClock:
    """A ``gc.callbacks`` entry that adds up the CPU seconds of the collector's passes."""

    def __init__(self) -> None:
        self.seconds, self.full, self._start = 0.0, 0, 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start
            self.full += info["generation"] == 2


def measure_store(home: AwbHome, pin_key: str, size: int) -> dict[str, float]:
    """The store's lookups over synthetic sealed runs covering every plate."""
    figures: dict[str, float] = {}
    last_record = seal_synthetic_runs(home, pin_key)
    store = home.store()
    pairs = timed_cpu(figures, "sealed_pairs", lambda: store.sealed_pairs(pin_key), LOOKUP_REPEATS)
    assert len(pairs) == size, (len(pairs), size)
    step_plates = {plate_id for plate_id, _, _ in sorted(pairs)[:: max(1, size // STEP_PLATES)][:STEP_PLATES]}
    del pairs  # N live objects would slow every later lookup's garbage collection, which no real caller has
    step_pairs = timed_cpu(
        figures, "sealed_pairs_step", lambda: store.sealed_pairs(pin_key, plate_ids=step_plates), LOOKUP_REPEATS
    )
    assert len(step_pairs) == STEP_PLATES, len(step_pairs)
    timed_cpu(figures, "find_record", lambda: store.find_record(last_record), LOOKUP_REPEATS)
    timed_cpu(figures, "lineage", lambda: lineage(store, last_record), LOOKUP_REPEATS)
    store.index.path.unlink()
    timed_cpu(figures, "index_rebuild", store.index.rebuild, 1)
    return figures


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--graphql", action="store_true", help="also time the partitions page through a webserver")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="time only these rows after the setup (plates add)")
    parser.add_argument("--tick-repeats", type=int, default=0, help="automation_tick_best: the fastest of this many more ticks")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one more automation tick per size here")
    args = parser.parse_args()
    results: dict[str, Any] = {"host": platform.node(), "command": " ".join(["bench/scale.py", *sys.argv[1:]]), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="awb-scale-") as tmp:
        hub = LoopbackHub(Path(tmp) / "hub")
        hub.add_commit(
            MODEL, build_tiny_repo(KIND, seed=0), license=DEMO_LICENSE,
            pipeline_tag=DEMO_PIPELINE_TAGS[KIND], library_name="transformers",
        )  # fmt: skip
        endpoint = hub.start()
        try:
            for size in args.sizes:
                rows = tuple(args.only or ("tick", "store"))
                figures = measure(
                    size, Path(tmp) / f"n{size}", endpoint, args.graphql, rows, args.tick_repeats, args.profile
                )
                figures["load_average_1min"] = os.getloadavg()[0]  # the shared cores' load at the end of the size
                results["sizes"][size] = figures
                print(f"\n{size} plates:")
                for name, seconds in figures.items():
                    if name in ("automation_requested", "automation_tick_gc_full", "gc_objects", "load_average_1min"):
                        print(f"  {name:20s} {seconds:>10.1f}")
                    else:
                        print(f"  {name:20s} {seconds:10.3f} s  {seconds / size * 1e6:10.1f} us/plate")
        finally:
            hub.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main_bench()
