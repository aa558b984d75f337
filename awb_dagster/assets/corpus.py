"""What the corpus-level assets share: the embedding families they read, the automation that
re-requests them, the sealed run each writes, and the reader of ``atlas``'s latest run that
``ensemble_disagreement`` and ``topology_report`` analyse (so all three describe the same vectors).

Re-computation: ``atlas`` depends on every partition of the family assets, an edge across
which Dagster does not propagate staleness. :data:`CORPUS_AUTOMATION` requests an asset
once its upstream has new materializations and nothing upstream is still running; the code
location's automation sensor (``awb_automation_sensor``, running by default, targets every
asset) evaluates it.
"""

from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from awb_dagster.atlas.analysis import graph_from_table
from awb_dagster.atlas.knn import KnnGraph
from awb_dagster.atlas.spaces import Source, Space, read_space
from awb_dagster.provenance.store import Manifest, OpenRun, RunStore, verified_path
from awb_dagster.registry.model import Registry

ATLAS_CODE_VERSION = "atlas-1"
# Seed: "the minimum recommended ensemble is CLIP + DINOv2", so they come first in the default order.
FAMILY_ORDER = ("clip", "dinov2", "siglip", "aimv2", "biomedclip", "convnet")  # convnet: the torchvision texture baselines (seed 11)
FAMILY_ASSETS = [f"{family}_embeddings" for family in FAMILY_ORDER]
ATLAS_KEY = dg.AssetKey("atlas")

CORPUS_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("upstream has new materializations, none in progress")



def open_corpus_run(store: RunStore, kind: str, context: dg.AssetExecutionContext, config: dg.Config) -> OpenRun:
    return store.open_run(
        kind=kind,
        dagster_run_id=context.run_id,
        code_version=ATLAS_CODE_VERSION,
        device="cpu",
        config=config.model_dump(),
    )



def table_schema(row: dict[str, Any]) -> dg.TableSchema:
    kinds = {bool: "bool", int: "int", float: "float"}
    return dg.TableSchema.from_name_type_dict({name: kinds.get(type(v), "string") for name, v in row.items()})


def metadata_table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    return dg.MetadataValue.table([dg.TableRecord(row) for row in rows], schema=table_schema(rows[0]))



class AtlasRun:
    """The sealed run of ``atlas``'s latest materialization: its spaces and graphs."""

    def __init__(self, store: RunStore, manifest: Manifest):
        self.manifest = manifest
        self.inputs: list[dict[str, Any]] = manifest.payload["inputs"]["spaces"]
        self.spaces: dict[tuple[str, str], Space] = {}
        self.graphs: dict[tuple[str, str], KnnGraph] = {}
        for item in self.inputs:
            space = read_space(
                store,
                pin_key=item["pin_key"],
                scope=item["scope"],
                preprocess_tag=item["preprocess_tag"],
                sources=[Source.from_json(s) for s in item["sources"]],
            )
            path = verified_path(store, manifest.run_id, item["graph"], manifest.artifact(item["graph"])["sha256"])
            key = (item["pin_key"], item["scope"])
            self.spaces[key] = space
            self.graphs[key] = graph_from_table(pq.read_table(path), space)

    @classmethod
    def latest(cls, context: dg.AssetExecutionContext, store: RunStore) -> "AtlasRun":
        event = context.instance.get_latest_materialization_event(ATLAS_KEY)
        if event is None or event.asset_materialization is None:
            raise dg.Failure("atlas has no materialization yet; materialize atlas first")
        return cls(store, store.manifest(event.asset_materialization.metadata["run_id"].value))

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def k(self) -> int:
        """The k the atlas was configured with (each graph caps it at N-1)."""
        return self.manifest.payload["config"]["k"]

    def scopes(self) -> list[str]:
        return list(dict.fromkeys(item["scope"] for item in self.inputs))

    def items(self, scope: str) -> list[dict[str, Any]]:
        return [item for item in self.inputs if item["scope"] == scope]

    def stored(self, scope: str) -> dict[str, KnnGraph]:
        return {pin: graph for (pin, s), graph in self.graphs.items() if s == scope}

    def find(self, registry: Registry, name: str, scope: str) -> list[str]:
        """Pin keys of this run at ``scope`` that ``name`` names: a pin key names itself, an
        instrument id, key or alias its pins here. An unknown name raises ``UnknownModelError``."""
        pins = [item["pin_key"] for item in self.items(scope)]
        if name in pins:
            return [name]
        if registry.lock.find_key(name) is not None:
            return []  # a pin this run does not hold (an older pin, another scope)
        key = registry.get(name).instrument.key
        return [item["pin_key"] for item in self.items(scope) if item["instrument_key"] == key]

    def resolve(self, registry: Registry, name: str, scope: str) -> str:
        """The one pin key of this run that ``name`` names, or a failure that says what to do."""
        matches = self.find(registry, name, scope)
        if len(matches) != 1:
            available = ", ".join(item["pin_key"] for item in self.items(scope)) or "none"
            problem = "has no vectors in" if not matches else "has several pins in"
            raise dg.Failure(
                f"{name!r} {problem} atlas run {self.run_id} ({scope} scope; pins: {available}); "
                "name one of those pins, or materialize its embeddings and then the atlas"
            )
        return matches[0]


def models_of(run: AtlasRun) -> dict[str, str]:
    return {item["pin_key"]: item["model_id"] for item in run.inputs}


def add_atlas_inputs(out: OpenRun, run: AtlasRun, pins: set[str]) -> None:
    """The atlas run, its instruments, plates and records used, as inputs of a downstream run."""
    chosen = [item for item in run.inputs if item["pin_key"] in pins]
    for item in chosen:
        space = run.spaces[(item["pin_key"], item["scope"])]
        for plate_id, sha256 in zip(space.plate_ids, space.plate_sha256s):
            out.add_plate({"plate_id": plate_id, "sha256": sha256})
    for instrument in run.manifest.payload["instruments"]:
        if instrument["pin_key"] in pins:
            out.add_instrument(instrument)
    out.note("inputs", {"atlas_run_id": run.run_id, "spaces": chosen})

