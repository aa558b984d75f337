"""Crash safety of `awb run` (issue 10, item 4): a run stopped by SIGTERM or killed with
``kill -9`` mid-run keeps the chunks it sealed and does not wedge the home; the next `awb run`
marks the dead process's Dagster run failed (freeing its `gpu` slot), finishes in bounded time and
processes only the plates no chunk sealed. The union of sealed records equals a clean run's.

Each `awb run` here is a real subprocess; one sealed run per four plates (``--seal-every 4``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image

from awb_dagster.instance import PID_TAG
from awb_dagster.paths import REPO_ROOT
from awb_dagster.runner import materialize_family
from demo_homes import make_demo_home

CLIP = "awb-demo/tiny-clip"
EXTRA_PLATES = 12  # with the 6 sample plates: 18 plates, five chunks of at most four


def synthetic_plates(count: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    return {f"synthetic-{i:02d}.png": Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for i in range(count)}


def awb_run(home, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "awb_dagster.cli", "run", "--family", "clip", "--batch-size", "1", "--seal-every", "4",
         "--home", str(home.paths.root), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip


def manifests(home) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(home.paths.store, "runs").glob("*/run.manifest.json"))]


def sealed_record_ids(home) -> Counter:
    return Counter(record_id for manifest in manifests(home) for pair in manifest["pairs"] for record_id in pair["record_ids"])


def wait_for_manifests(home, process: subprocess.Popen, count: int, timeout: float = 240) -> int:
    """Wait until ``count`` more chunks than now are sealed; returns how many are sealed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sealed = len(manifests(home))
        if sealed >= count:
            return sealed
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    raise AssertionError(f"no {count} sealed chunks after {timeout} s")


def runs_by_pid(instance: dg.DagsterInstance, pid: int) -> list[dg.DagsterRun]:
    return [run for run in instance.get_runs() if run.tags.get(PID_TAG) == str(pid)]


def test_sigterm_and_kill_9_mid_run_lose_at_most_a_chunk(loopback_hub, tmp_path_factory):
    home = make_demo_home(loopback_hub, tmp_path_factory, "crash", [CLIP], extra_plates=synthetic_plates(EXTRA_PLATES))
    plates = len(home.catalog.plates)
    assert plates >= EXTRA_PLATES + 6  # the sample plates too

    # SIGTERM after the first chunk: a clean stop, the Dagster run failed (not left STARTED).
    stopped = awb_run(home)
    wait_for_manifests(home, stopped, 1)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130, err[-3000:]
    assert "stopped by SIGTERM" in err
    (stopped_run,) = runs_by_pid(home.instance, stopped.pid)
    assert stopped_run.status == dg.DagsterRunStatus.FAILURE

    # kill -9 after one more chunk: the run stays STARTED, holding the gpu slot.
    killed = awb_run(home)
    sealed_before = len(manifests(home))
    wait_for_manifests(home, killed, sealed_before + 1)
    killed.kill()
    killed.communicate(timeout=60)
    (killed_run,) = runs_by_pid(home.instance, killed.pid)
    assert killed_run.status == dg.DagsterRunStatus.STARTED
    assert killed_run.run_id in home.instance.event_log_storage.get_concurrency_info("gpu").active_run_ids  # the wedge
    sealed_at_kill = sealed_record_ids(home)
    assert 0 < len(sealed_at_kill) and max(sealed_at_kill.values()) == 1
    plates_at_kill = {pair["plate_id"] for manifest in manifests(home) for pair in manifest["pairs"]}

    # The next `awb run` frees the dead run's slot and completes only what is missing.
    started = time.monotonic()
    rerun = awb_run(home)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert time.monotonic() - started < 300
    assert f"dagster run {killed_run.run_id}: its process is gone" in out
    assert home.instance.get_run_by_id(killed_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not home.instance.event_log_storage.get_concurrency_info("gpu").active_run_ids
    assert f"{plates - len(plates_at_kill)} to process, {len(plates_at_kill)} already sealed" in err
    sealed_plates = {pair["plate_id"] for manifest in manifests(home) for pair in manifest["pairs"]}
    assert len(sealed_plates) == plates
    after = sealed_record_ids(home)
    assert max(after.values()) == 1, "a plate sealed before the kill was processed again"

    # A run waiting for the gpu slot says which run holds it and stops on SIGTERM (Dagster's own
    # wait inside a run ignores signals).
    storage = home.instance.event_log_storage
    assert storage.claim_concurrency_slot("gpu", "holder-run", "holder-step").is_claimed
    waiting_log = Path(home.paths.root, "waiting.log")
    with open(waiting_log, "w") as log:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "awb_dagster.cli", "run", "--family", "clip", "--home", str(home.paths.root)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "waiting for a `gpu` slot, held by dagster run(s) holder-run" not in waiting_log.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, waiting_log.read_text()[-3000:]
            time.sleep(0.1)
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=60) == 130
    finally:
        storage.free_concurrency_slots_for_run("holder-run")

    # The union equals a clean run's records on a fresh home.
    clean = make_demo_home(loopback_hub, tmp_path_factory, "clean", [CLIP], extra_plates=synthetic_plates(EXTRA_PLATES))
    (result,) = materialize_family(clean.defs, clean.instance, "clip", clean.pin_key)
    assert result.success
    assert set(after) == set(sealed_record_ids(clean))


@pytest.mark.parametrize("yaml_name", ["dagster.yaml", "dagster.sqlite.yaml", "dagster.postgres.yaml"])
def test_instance_yamls_monitor_runs_and_free_slots(yaml_name):
    monitoring = yaml.safe_load((REPO_ROOT / yaml_name).read_text())["run_monitoring"]
    assert monitoring["enabled"] and monitoring["free_slots_after_run_end_seconds"] > 0
    assert monitoring["max_resume_run_attempts"] == 0  # a dead GPU run is failed, never resumed half-way
