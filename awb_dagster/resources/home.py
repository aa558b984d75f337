"""The home directory: run store, pin lock, plate catalog and hub cache of one deployment."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import DEFAULT_MAX_PIXELS, PlateCatalog
from awb_dagster.provenance.store import RunStore
from awb_dagster.registry.model import Registry


class AwbHome(dg.ConfigurableResource):
    """Everything awb writes lives under ``home`` (``awb --home``, ``$AWB_HOME``)."""

    home: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def paths(self) -> HomePaths:
        return HomePaths(Path(self.home))

    def store(self) -> RunStore:
        return RunStore(self.paths.store)

    def registry(self) -> Registry:
        return Registry.load(lock_path=self.paths.lock)

    def catalog(self) -> PlateCatalog:
        return PlateCatalog.load(self.paths.catalog)
