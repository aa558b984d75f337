"""Where awb keeps its state. One home holds the store, the Dagster instance, the pin lock,
the plate catalog and the hub cache, so a deployment is one folder to back up or move."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "AWB_HOME"
DEFAULT_HOME = ".awb"
REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home`` if given, else ``$AWB_HOME``, else ``.awb/`` under the working directory."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class HomePaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def lock(self) -> Path:
        return self.root / "pins.lock.json"

    @property
    def catalog(self) -> Path:
        return self.root / "plates" / "catalog.json"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def hf_cache(self) -> Path:
        return self.root / "hf-cache"

    @property
    def weights(self) -> Path:
        """Weight files pinned by sha256 (``source = "url"``), as ``<sha256>/<file name>``."""
        return self.root / "weights"

    @property
    def hub(self) -> Path:
        """Where the offline demo keeps the repos its loopback hub serves."""
        return self.root / "demo-hub"
