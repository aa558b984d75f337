"""No duplicates under concurrency (issue 10, item 5): one (family, pin) is processed by one run
at a time on a home, whatever launched it, and two scans saving the plate catalog at once keep
both's plates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from awb_dagster.assets.plates import scan_plates
from awb_dagster.engine.core import pin_lock_path
from awb_dagster.locking import hold_lock, lock_file_name
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR, PlateCatalog
from awb_dagster.resources import AwbHome
from demo_homes import make_demo_home

CLIP = "awb-demo/tiny-clip"


def test_two_concurrent_runs_of_one_pin_seal_each_record_once(loopback_hub, tmp_path_factory, tmp_path):
    home = make_demo_home(loopback_hub, tmp_path_factory, "concurrent", [CLIP])
    command = [sys.executable, "-m", "awb_dagster.cli", "run", "--family", "clip", "--home", str(home.paths.root)]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    # The test holds the pin's lock while both runs start, so both are under way together: one
    # waits for the lock in the engine, the other for it or for the home's `gpu` pool slot.
    with hold_lock(pin_lock_path(home.store, home.pin_key)):
        runs = []
        for log in logs:
            with open(log, "w") as handle:
                runs.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ)))
        deadline = time.monotonic() + 240
        while not any("another run is processing this pin" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, "the runs never waited for the pin's lock"
            assert all(run.poll() is None for run in runs), [log.read_text()[-3000:] for log in logs]
            time.sleep(0.1)
    for run, log in zip(runs, logs):
        assert run.wait(timeout=240) == 0, log.read_text()[-3000:]

    manifests = [json.loads(p.read_text()) for p in Path(home.paths.store, "runs").glob("*/run.manifest.json")]
    sealed = Counter(record_id for m in manifests for pair in m["pairs"] for record_id in pair["record_ids"])
    assert sealed and max(sealed.values()) == 1, "a record id was sealed by both runs"
    assert {pair["plate_id"] for m in manifests for pair in m["pairs"]} == set(home.catalog.plates)
    plates = len(home.catalog.plates)
    texts = sorted(log.read_text() for log in logs)
    assert sum(f"{plates} to process, 0 already sealed" in text for text in texts) == 1
    assert sum(f"0 to process, {plates} already sealed" in text for text in texts) == 1


def test_concurrent_scans_keep_both_folders_plates(tmp_path):
    home = AwbHome(home=str(tmp_path / "home"))
    samples = sorted(p for p in SAMPLE_PLATES_DIR.iterdir() if p.suffix in (".jpg", ".png"))
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder, files in zip(folders, (samples[::2], samples[1::2])):
        folder.mkdir()
        for file in files:
            shutil.copy(file, folder / file.name)
    start = threading.Barrier(len(folders))
    errors: list[BaseException] = []

    def add(folder: Path) -> None:
        start.wait()
        try:
            scan_plates(home, [folder])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    catalog = PlateCatalog.load(home.paths.catalog)
    assert len(catalog.plates) == len(samples)
    assert sorted(catalog.sources) == sorted(str(folder.resolve()) for folder in folders)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("demo-tiny-clip@bf761d8229", "demo-tiny-clip@bf761d8229.lock"),
        ("demo-tiny-clip@bf761d8229~demo-tiny-sam@4949e5969b", "demo-tiny-clip@bf761d8229~demo-tiny-sam@4949e5969b.lock"),
        ("../escape", None),
        ("a/b", None),
    ],
)
def test_lock_file_names_stay_in_their_folder_and_apart(key, expected):
    name = lock_file_name(key)
    assert "/" not in name and not name.startswith(".")
    if expected is not None:
        assert name == expected
    else:
        assert name != lock_file_name(key.replace("/", "_")), "two keys share a lock file"


def test_a_held_lock_makes_the_second_holder_wait(tmp_path):
    path = tmp_path / "locks" / "key.lock"
    events: list[str] = []

    def second() -> None:
        with hold_lock(path, on_wait=lambda: events.append("waited")):
            events.append("second holds it")

    with hold_lock(path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        events.append("first lets go")
    thread.join(timeout=10)
    assert events == ["waited", "first lets go", "second holds it"]
