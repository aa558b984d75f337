"""Test homes: demo repos pinned from the loopback hub (the ``loopback_hub`` fixture of
conftest.py), the sample plates registered and the dynamic partitions synced."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest


@dataclass
class DemoHome:
    """A home with demo repos pinned from the loopback hub, the sample plates registered and the
    partitions synced, as the plate sensor would leave it."""

    paths: object  # HomePaths
    resource: object  # AwbHome
    instance: object  # dg.DagsterInstance
    defs: object  # dg.Definitions
    pins: dict[str, str]  # demo repo id -> pin key
    catalog: object  # PlateCatalog
    added: dict[str, list[str]]  # dynamic partition keys the sync added

    @property
    def pin_key(self) -> str:
        """The pin of the first repo pinned."""
        return next(iter(self.pins.values()))

    @property
    def store(self):
        return self.resource.store()


def make_demo_home(
    hub,  # conftest.HubFixture
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    repos: list[str],
    *,
    extra_plates: dict[str, object] | None = None,
    plate_files: list | None = None,
    revisions: dict[str, str] | None = None,
    **definition_overrides,
) -> DemoHome:
    """Pin ``repos`` from the loopback hub into a fresh home, register the sample plates (or the
    files ``plate_files``; plus ``extra_plates``: file name -> PIL image) and build the
    definitions for that home. ``revisions``: repo id -> the sha to pin instead of the head."""
    from awb_dagster.assets.plates import scan_plates, sync_partitions
    from awb_dagster.definitions import build_definitions
    from awb_dagster.instance import open_instance
    from awb_dagster.paths import HomePaths
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin
    from awb_dagster.resources import AwbHome

    paths = HomePaths(tmp_path_factory.mktemp(f"{name}-home"))
    plates_dir = tmp_path_factory.mktemp(f"{name}-plates")
    sources = plate_files if plate_files is not None else sorted(SAMPLE_PLATES_DIR.iterdir())
    for plate in sources:
        if plate.suffix in (".jpg", ".png"):
            shutil.copy(plate, plates_dir / plate.name)
    for file_name, image in (extra_plates or {}).items():
        image.save(plates_dir / file_name)
    registry = Registry.load(lock_path=paths.lock)
    lock = PinLock.load(paths.lock)
    pins = {}
    for repo in repos:
        pin = capture_pin(registry.get(repo).instrument, endpoint=hub.endpoint, revision=(revisions or {}).get(repo))
        lock.add(pin)
        pins[repo] = pin.key
    lock.save(paths.lock)
    resource = AwbHome(home=str(paths.root))
    catalog, result = scan_plates(resource, [plates_dir])
    assert not result.rejected
    instance = open_instance(paths)
    added = sync_partitions(instance, resource)
    defs = build_definitions(home=str(paths.root), endpoint=hub.endpoint, offline=False, **definition_overrides)
    return DemoHome(paths, resource, instance, defs, pins, catalog, added)
