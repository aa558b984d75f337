"""When the family assets re-materialize on their own: on a cron tick, every (plate, pin)
partition that is missing (a new pin, a new plate, a failed run) or whose plate bytes changed,
for every pin that is not retired.

The pieces, and why:

- ``cron_tick_passed(cron)``: true only on the first evaluation after a tick, so requests go
  out on schedule (default nightly) and not whenever something changes during the day. A
  partition still missing after that (its run failed) is requested again at the next tick.
- ``missing()``: a new pin key (``awb pin``) or plate key (the plate sensor) brings partitions
  that were never materialized; old pins' partitions are materialized and stay untouched.
- ``any_deps_updated().allow(plate_files).since_last_handled() & PlateBytesUnsealed``:
  ``plate_files`` is an observable source partitioned by plate whose data version is the plate's
  sha256, and Dagster counts an observation as an update only when that version changed.
  ``since_last_handled`` remembers a change seen during the day until the partition is requested
  or materialized. A plate's first observation counts as a change too (the first plate sensor
  tick after `awb demo` or `awb plates add`), so ``PlateBytesUnsealed`` keeps only the
  partitions whose plate's current bytes have no sealed pair for the pin in the home's store:
  automation requests only real work, never a run that would only reuse sealed records.
  ``plate_catalog`` is left out on purpose: it is unpartitioned, so any rescan would mark every
  partition of every pin as updated. Upstream families (``also_updated``: a new mask set for
  segment embeddings) count without that filter: their new records are new work.
- ``PinNotRetired``: retirement lives in the pin lock, which Dagster cannot see, so this
  custom condition reads the lock at each evaluation. Custom conditions run only in an
  automation sensor evaluated in the code server (``use_user_code_server=True``).
- ``~in_progress()``: never request a partition a run or backfill is already working on.
- ``RetryBudget(max_retries)``: a partition whose runs keep failing (a model that cannot load)
  is requested again at the next ticks at most ``max_retries`` times, then left failed in the
  UI until something changes: it is materialized (a run from the UI or `awb run`) or its plate's
  bytes change. It counts the distinct failed runs per partition in its cursor.

``emit_backfills=True`` on the sensor turns one tick's requests into a backfill that honours
the family's single-run backfill policy: one run (one model load) per contiguous plate range
of a pin.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg

from awb_dagster.constants import PIN_DIMENSION, PLATE_DIMENSION, PLATE_FILES_KEY
from awb_dagster.paths import HomePaths
from awb_dagster.plates.catalog import PlateCatalog
from awb_dagster.producers.florence_tasks import FLORENCE_TASK_PRODUCERS
from awb_dagster.provenance.caption_records import florence_pair_key
from awb_dagster.provenance.records import REGION_PAIR_SEPARATOR, tile_pair_key
from awb_dagster.provenance.store import RunStore
from awb_dagster.provenance.zeroshot import zeroshot_pair_key
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry import Registry, RegistryError

DEFAULT_AUTOMATION_CRON = "0 2 * * *"  # nightly, 02:00 UTC
DEFAULT_MAX_RETRIES = 2  # automatic re-requests of a failed partition, one per tick
# The store key a family's partition pairs are sealed under, where it is not the pin key.
_STORE_KEY_OF_PIN = {
    "tile_embeddings": tile_pair_key, "clip_zeroshot_labels": zeroshot_pair_key, "siglip_zeroshot_labels": zeroshot_pair_key,
    **{p.asset_name: partial(florence_pair_key, task=p.task) for p in FLORENCE_TASK_PRODUCERS},
}  # fmt: skip
AUTOMATION_SENSOR_NAME = "awb_automation_sensor"


@dataclass(frozen=True)
class PinNotRetired(dg.AutomationCondition):
    """True for the partitions whose ``pin`` key belongs to a pin of the lock that is not retired;
    a region key that pairs pins (``<embedding pin>~<sam pin>``) needs both not retired."""

    lock_path: str

    @property
    def name(self) -> str:
        return "pin_not_retired"

    @property
    def description(self) -> str:
        return f"The partition's pin is in {self.lock_path} and not retired"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        automated = PinLock.load(self.lock_path).automated_keys()
        partitions_def = candidates.partitions_def
        if all(
            pin in automated
            for pin_key in _pin_keys(context, partitions_def)
            for pin in pin_key.split(REGION_PAIR_SEPARATOR)
        ):  # no retired or unknown pin among the keys: every candidate stays, none is listed
            return dg.AutomationResult(context, candidates)
        keep = {
            key
            for key in candidates.expensively_compute_partition_keys()
            if all(
                pin in automated
                for pin in partitions_def.get_partition_key_from_str(key)
                .keys_by_dimension[PIN_DIMENSION]
                .split(REGION_PAIR_SEPARATOR)
            )
        }
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(keep))


def _pin_keys(context: dg.AutomationContext, partitions_def: dg.PartitionsDefinition) -> list[str]:
    """The keys of the pins dimension (few), from the evaluation's cached dynamic partitions."""
    pins_def = partitions_def.get_partitions_def_for_dimension(PIN_DIMENSION)
    store = context.asset_graph_view.partition_loading_context.dynamic_partitions_store
    return list(pins_def.get_partition_keys(dynamic_partitions_store=store))


def _partition_dims(key: str, partitions_def: dg.PartitionsDefinition) -> tuple[str, str]:
    """(pin key, plate id) of a family partition key."""
    dims = partitions_def.get_partition_key_from_str(key).keys_by_dimension
    return dims[PIN_DIMENSION], dims[PLATE_DIMENSION]


@dataclass(frozen=True)
class PlateBytesUnsealed(dg.AutomationCondition):
    """True for the partitions whose plate's current bytes (sha256 in the catalog) have no
    sealed pair for the partition's pin in the home's store: a run for them is real work."""

    home: str

    @property
    def name(self) -> str:
        return "plate_bytes_unsealed"

    @property
    def description(self) -> str:
        return f"The plate's current bytes have no sealed records for this pin in {self.home}/store"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        paths = HomePaths(Path(self.home))
        plates = PlateCatalog.load(paths.catalog).plates
        sealed = {
            (pair["pin_key"], pair["plate_id"], pair["plate_sha256"])
            for manifest in RunStore(paths.store).manifests()
            for pair in manifest.pairs
        }
        store_key = _STORE_KEY_OF_PIN.get(context.key.path[-1], lambda pin: pin)
        keep = set()
        for key in candidates.expensively_compute_partition_keys():
            pin, plate_id = _partition_dims(key, candidates.partitions_def)
            plate = plates.get(plate_id)
            if plate is None or (store_key(pin), plate_id, plate.sha256) not in sealed:
                keep.add(key)
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(keep))


@dataclass(frozen=True)
class RetryBudget(dg.AutomationCondition):
    """True for the partitions that have not failed more than ``max_retries`` times since they
    last materialized or their plate's bytes changed. Its cursor holds, per failing partition,
    the plate sha256 and the failed Dagster runs seen; Dagster's event log says which
    partitions' latest attempt has no materialization (failed, or running: ``~in_progress()``
    comes before this condition, so only failed ones reach it)."""

    home: str
    max_retries: int

    @property
    def name(self) -> str:
        return "retry_budget"

    @property
    def description(self) -> str:
        return f"Failed at most {self.max_retries + 1} times since it last materialized or its plate changed"

    @property
    def requires_cursor(self) -> bool:
        return True

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:  # between ticks: nothing to decide, the counts carry over
            return dg.AutomationResult(context, candidates, cursor=context.cursor)
        previous: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
        attempts = context.asset_graph_view.instance.event_log_storage
        failing = {
            key: run_id
            for key, (run_id, _) in attempts.get_latest_asset_partition_materialization_attempts_without_materializations(
                context.key
            ).items()
        }
        # A partition that materialized since is no longer failing: its count is forgotten.
        failures = {key: entry for key, entry in previous.items() if key in failing}
        # Only the failing candidates (few) are looked at; the others all stay.
        candidate_value = candidates.get_internal_value()
        failing_candidates = sorted(key for key in failing if key in candidate_value)
        if not failing_candidates:
            return dg.AutomationResult(context, candidates, cursor=json.dumps(failures, sort_keys=True))
        plates = PlateCatalog.load(HomePaths(Path(self.home)).catalog).plates
        spent = set()
        for key in failing_candidates:
            run_id = failing[key]
            plate = plates.get(_partition_dims(key, candidates.partitions_def)[1])
            sha = plate.sha256 if plate is not None else None
            entry = failures.get(key)
            if entry is None or entry["plate_sha256"] != sha:  # first failure seen, or new bytes
                entry = {"plate_sha256": sha, "runs": []}
            if run_id not in entry["runs"]:
                entry = {**entry, "runs": [*entry["runs"], run_id]}
            failures[key] = entry
            if len(entry["runs"]) > self.max_retries:
                spent.add(key)
        keep = candidates.compute_difference(candidates.compute_intersection_with_partition_keys(spent))
        return dg.AutomationResult(context, keep, cursor=json.dumps(failures, sort_keys=True))


def embedding_automation_condition(
    lock_path: Path | str,
    cron: str,
    also_updated: tuple[str, ...] = (),
    *,
    home: Path | str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> dg.AutomationCondition:
    """The family assets' condition (see the module docstring). ``also_updated`` names further
    upstream assets whose new materializations count like changed plate bytes (segment
    embeddings: ``sam_masks``, whose newest mask set decides what is embedded). ``home``
    defaults to the folder of the pin lock."""
    home = str(home or Path(lock_path).parent)
    plate_changed = (
        dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.keys(PLATE_FILES_KEY)).since_last_handled()
        & PlateBytesUnsealed(home)
    ).with_label("plate_bytes_changed")
    if also_updated:
        upstream_changed = (
            dg.AutomationCondition.any_deps_updated()
            .allow(dg.AssetSelection.keys(*also_updated))
            .since_last_handled()
            .with_label("upstream_updated")
        )
        plate_changed = plate_changed | upstream_changed
    return (
        dg.AutomationCondition.cron_tick_passed(cron)
        & PinNotRetired(str(lock_path))
        & (dg.AutomationCondition.missing() | plate_changed)
        & ~dg.AutomationCondition.in_progress()
        & RetryBudget(home, max_retries)
    ).with_label(f"missing_or_plate_changed_on_cron({cron})")


@dataclass(frozen=True)
class PinAdmitted(dg.AutomationCondition):
    """True for the partitions whose pin's model passes the admission and license gates under
    ``license_opt_in``: automation never requests a run that the gate would fail (the real
    Mask2Former's `other` license runs only once opted into)."""

    lock_path: str
    license_opt_in: tuple[str, ...]

    @property
    def name(self) -> str:
        return "pin_admitted"

    @property
    def description(self) -> str:
        return f"The partition's model is admitted with license opt-in {list(self.license_opt_in)}"

    @property
    def requires_cursor(self) -> bool:
        return False

    def _admits(self, registry: Registry, pin: Pin | None) -> bool:
        if pin is None:
            return False
        try:
            registry.require_admitted(pin.model_id, license_opt_in=self.license_opt_in)
        except RegistryError:
            return False
        return True

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        lock = PinLock.load(self.lock_path)
        registry = Registry.load(lock_path=Path(self.lock_path))
        admitted: dict[str, bool] = {}
        partitions_def = candidates.partitions_def
        keep = set()
        for key in candidates.expensively_compute_partition_keys():
            pin_key = partitions_def.get_partition_key_from_str(key).keys_by_dimension[PIN_DIMENSION]
            if pin_key not in admitted:
                admitted[pin_key] = self._admits(registry, lock.find_key(pin_key))
            if admitted[pin_key]:
                keep.add(key)
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(keep))


def with_family_automation(
    asset: dg.AssetsDefinition,
    lock_path: Path | str,
    cron: str,
    *,
    also_updated: tuple[str, ...] = (),
    license_opt_in: tuple[str, ...] | None = None,
    home: Path | str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> dg.AssetsDefinition:
    """``asset`` with :func:`embedding_automation_condition`; with ``license_opt_in`` (a
    license-gated family) restricted to the pins the license gate admits under it; a failing
    partition re-requested at most ``max_retries`` times (``home``: default the lock's folder)."""
    home = str(home or Path(lock_path).parent)
    condition = embedding_automation_condition(lock_path, cron, also_updated, home=home, max_retries=max_retries)
    if license_opt_in is not None:
        condition = condition & PinAdmitted(str(lock_path), license_opt_in)
    (automated,) = dg.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition), [asset])
    return automated


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # use_user_code_server is beta in 1.13
    automation_sensor = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,  # `awb ui` automates with nothing to toggle
        emit_backfills=True,
        use_user_code_server=True,  # PinNotRetired is Python: it must run where the code is
        description="Evaluates the automation conditions of this code location (the family assets "
        "re-materialize missing or changed (plate, pin) partitions on their cron).",
    )
