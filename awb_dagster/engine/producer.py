"""What a family supplies to the engine: a :class:`Producer` (the family as a whole: asset
name, partitions, settings, checks) and, per pin of a step, a :class:`PinSession` (the
instrument loaded once at that pin: its tag, how to prepare and process plates, its
metadata). Everything else — planning, reuse of sealed pairs, opening and sealing the run,
streaming, failures and the provenance of every partition — is the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.store import Artifact, OpenRun, RunStore, SealedPair


@dataclass(frozen=True)
class StepInputs:
    """What every session of a step may use: the resources and the home's store and catalog."""

    instruments: Any  # loads instruments at their pins through the admission and license gates
    torch_settings: Any  # device, dtype, batch size, decode workers
    store: RunStore
    catalog: PlateCatalog
    max_pixels: int


@dataclass(frozen=True)
class PlateOutput:
    """One plate's records, written by :meth:`PinSession.process` into the open run.

    ``artifact`` holds the records (several plates may share one, as a batch of embeddings
    does); ``facts`` are per-plate values the partition metadata shows only when computed."""

    plate: Plate
    preprocess_tag: str
    record_ids: list[str]
    artifact: Artifact
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlateFailure:
    """A plate the session could not process; its partition fails, the others are sealed."""

    plate: Plate
    reason: str


class PinSession(Protocol):
    """One pin of one step, loaded once.

    ``instrument`` is the loaded instrument: it has ``instrument`` (the registry entry),
    ``pin``, ``device``, ``dtype`` and ``describe()`` (its manifest entry)."""

    instrument: Any
    store_key: str  # pair key in the store (the pin key, or a pin pair for region assets)
    run_kind: str  # sealed run kind, e.g. "clip-embeddings"
    code_version: str
    batch_size: int  # plates per call of process()

    def run_config(self) -> dict[str, Any]:
        """Settings that shaped the run (written to the manifest)."""

    def expected_tag(self, plate: Plate) -> str | None:
        """The preprocess tag the plate's records will carry; None when it cannot be known
        before processing (the plate is then processed unless forced off by a sealed pair)."""

    def prepare(self, plate: Plate) -> Any:
        """Per-plate work that runs in decode threads (decode, crop); raising fails the plate."""

    def process(self, batch: Sequence[tuple[Plate, Any]], run: OpenRun) -> list[PlateOutput | PlateFailure]:
        """Prepared plates -> records and artifacts written into ``run``."""

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        """Family-specific metadata of one partition (``facts`` only when computed now)."""


class Producer(Protocol):
    """A family of the plate × pin engine."""

    asset_name: str  # e.g. "clip_embeddings"
    pins_dimension: str  # the dynamic partitions of the pin dimension, e.g. "clip_pins"
    group: str
    description: str
    code_version: str
    settings_type: type  # a frozen dataclass of run settings (the asset's run config, plus `force`)
    check_descriptions: Mapping[str, str]  # blocking checks run with every materialization
    upstream: tuple[str, ...]  # assets whose plate partitions this family reads (same plate)
    license_gated: bool  # automation requests only pins the license gate admits

    def open(self, pin_key: str, settings: Any, inputs: StepInputs) -> PinSession:
        """Load the instrument of ``pin_key`` (once per step) and return its session."""

    def checks(
        self,
        store: RunStore,
        catalog: PlateCatalog,
        pairs: Sequence[SealedPair],
        sessions: Mapping[str, PinSession],
    ) -> dict[str, CheckOutcome]:
        """The output contract over every sealed pair of the step, computed or reused."""
