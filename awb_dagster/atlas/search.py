"""Text-to-plate search: a text, encoded by the pinned CLIP or SigLIP text tower, ranks the plates by
cosine against the SEALED image embedding records of the same pin (read with their checksums
verified, never recomputed). Each hit names its embedding record, so ``awb lineage RECORD`` traces it
to the plate bytes and the pin.

Plain Python: no Dagster (``awb search`` and the demo call :func:`search_home`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from awb_dagster.atlas.spaces import Space, load_space
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.text_tower import TEXT_FAMILIES, TextTower
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.provenance.records import l2_normalize
from awb_dagster.provenance.store import RunStore, StoreError
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry.model import Registry


@dataclass(frozen=True)
class Hit:
    rank: int
    plate_id: str
    score: float  # cosine between the text and the plate's sealed image embedding
    record_id: str  # the image embedding record (awb lineage)


@dataclass(frozen=True)
class SearchResult:
    text: str
    pin_key: str
    model_id: str
    image_tag: str  # the preprocess tag of the embedding records searched
    text_tag: str  # the text tower's tokenization and adapter
    plates: int  # plates searched
    hits: tuple[Hit, ...]
    skipped: dict[str, int]  # sealed pairs left out, by reason (another preprocess tag, ...)


def rank(space: Space, query: np.ndarray, k: int) -> list[Hit]:
    """The ``k`` plates of ``space`` nearest ``query`` (a raw text vector) by cosine; ties by plate id."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vector = l2_normalize(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    if vector.shape[0] != space.dim:
        raise InstrumentError(
            f"{space.pin_key}: the text tower gives {vector.shape[0]}-d vectors but the sealed image "
            f"embeddings are {space.dim}-d; they are not one model's space"
        )
    scores = space.vectors @ vector
    order = sorted(range(space.n), key=lambda i: (-float(scores[i]), space.plate_ids[i]))[:k]
    return [Hit(n + 1, space.plate_ids[i], float(scores[i]), space.record_ids[i]) for n, i in enumerate(order)]


def choose_pin(registry: Registry, lock: PinLock, pin_key: str | None, lock_path: object) -> Pin:
    """``pin_key`` (a CLIP or SigLIP pin of the lock), or the first active CLIP pin in roster order."""
    if pin_key:
        pin = lock.find_key(pin_key)
        if pin is None:
            raise InstrumentError(f"pin {pin_key} is not in the lock file {lock_path}; pin the model first (`awb pin MODEL`)")
        family = registry.get(pin.model_id).instrument.family
        if family not in TEXT_FAMILIES:
            raise InstrumentError(f"pin {pin_key} is a {family} model; search needs a CLIP or SigLIP pin (a text tower)")
        return pin
    for entry in registry.family("clip"):
        if entry.active_pin is not None:
            return entry.active_pin
    raise InstrumentError(
        f"no active CLIP pin in {lock_path}: pin one (`awb pin openai/clip-vit-base-patch32`), materialize its "
        "embeddings (`awb run --family clip`), then search; or name a SigLIP pin with --pin"
    )


def search_plates(store: RunStore, catalog: PlateCatalog, tower: TextTower, text: str, k: int) -> SearchResult:
    """Rank the catalog's plates for ``text`` against the sealed plate embeddings of the tower's pin."""
    plates = {plate.plate_id: plate.sha256 for plate in catalog.plates.values()}
    pin_key, family = tower.pin.key, tower.instrument.family
    space, skipped = load_space(store, pin_key, "plate", plates)
    if space is None:
        raise StoreError(
            f"no sealed {family}_embeddings records of pin {pin_key} for the {len(plates)} catalog plates under "
            f"{store.runs_dir}: materialize them first (`awb run --family {family} --pin {pin_key}`)"
        )
    hits = rank(space, tower.encode([text])[0], k)
    return SearchResult(text, pin_key, tower.instrument.id, space.preprocess_tag, tower.tag, space.n, tuple(hits), skipped)


def search_home(
    paths: HomePaths,
    text: str,
    *,
    pin_key: str | None = None,
    k: int = 10,
    device: str = "auto",
    license_opt_in: Iterable[str] = (),
    local_files_only: bool = True,
) -> SearchResult:
    """Search a home: its lock, catalog and store; the text tower from the home's hub cache (offline)."""
    registry = Registry.load(lock_path=paths.lock)
    pin = choose_pin(registry, PinLock.load(paths.lock), pin_key, paths.lock)
    entry = registry.require_admitted(pin.model_id, license_opt_in=license_opt_in)
    catalog = PlateCatalog.load(paths.catalog)
    if not catalog.plates:
        raise StoreError(f"the plate catalog {paths.catalog} is empty: register plates first (`awb plates add DIR`)")
    tower = TextTower(
        entry.instrument, pin, device=device, cache_dir=paths.hf_cache, local_files_only=local_files_only
    )
    return search_plates(RunStore(paths.store), catalog, tower, text, k)


def hit_rows(result: SearchResult) -> list[Mapping[str, str]]:
    """One printable row per hit."""
    return [
        {"rank": str(h.rank), "plate_id": h.plate_id, "score": f"{h.score:.4f}", "record_id": h.record_id}
        for h in result.hits
    ]
