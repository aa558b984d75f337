"""`awb demo`: the whole chain offline, on tiny random-weight checkpoints of the real
CLIP, SigLIP and DINOv2 architectures served by a loopback hub."""

from __future__ import annotations

import time
from pathlib import Path

from awb_dagster.constants import EMBEDDING_FAMILIES, TEXTURE_FAMILIES
from awb_dagster.demo.caption_demo import caption_summary, pin_demo_captioner, publish_demo_captioner
from awb_dagster.demo.quiet import StepLine
from awb_dagster.demo.ocr_demo import TESSERACT, ocr_summary, pin_installed_tesseract
from awb_dagster.demo.search_demo import search_summary
from awb_dagster.demo.tiny_exotic import DEMO_NOT_PINNED
from awb_dagster.paths import HomePaths
from awb_dagster.provenance.report import format_lineage, text_table

SAMPLE_PLATES = Path(__file__).resolve().parent.parent / "sample_plates"
DEMO_CONVNET = "awb-demo/tiny-convnext"  # a torchvision architecture, pinned from a local weight file


_STEP = StepLine()


def _say(message: str) -> None:
    _STEP.clear()
    print(message, flush=True)


def _step(message: str) -> None:
    """Progress: the step at work, on the one line a terminal shows (nothing when piped)."""
    _STEP.show(f"awb demo: {message} ...")


def run_demo(home: Path, plates_dir: Path | None = None) -> int:
    from awb_dagster.assets.plates import scan_plates, sync_partitions
    from awb_dagster.definitions import build_definitions
    from awb_dagster.demo.box_demo import box_chain_summary
    from awb_dagster.demo.checkpoints import DEMO_REPOS, publish_demo_repos, write_tiny_convnext
    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.demo.foreground_demo import foreground_summary
    from awb_dagster.demo.probes import probe_axes_summary, probe_summary
    from awb_dagster.instance import open_instance
    from awb_dagster.provenance.lineage import lineage
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin
    from awb_dagster.registry.torchvision_weights import capture_torchvision_pin
    from awb_dagster.resources import AwbHome
    from awb_dagster.resources.settings import env_list
    from awb_dagster.runner import materialize_family

    paths = HomePaths(home)
    paths.root.mkdir(parents=True, exist_ok=True)
    _say(f"awb demo: home {paths.root}")

    hub = LoopbackHub(paths.hub)
    # Publish only repos this home's hub lacks: re-publishing would move heads and add pins.
    missing = sorted(set(DEMO_REPOS) - set(hub.repo_ids()))
    if missing:
        _say(f"building tiny checkpoints {', '.join(missing)} (random weights: outputs carry no meaning)")
        publish_demo_repos(hub, only=missing)
    publish_demo_captioner(hub, _say)
    with hub:
        endpoint = hub.start()
        _say(f"loopback hub serving {len(DEMO_REPOS)} demo repos at {endpoint}")

        registry = Registry.load(lock_path=paths.lock)
        lock = PinLock.load(paths.lock)
        pinned_repos = [repo for repo in DEMO_REPOS if repo not in DEMO_NOT_PINNED]
        for repo_id in pinned_repos:
            pin = capture_pin(registry.get(repo_id).instrument, endpoint=endpoint, cache_dir=paths.hf_cache)
            lock.add(pin)
            _step(f"pinned {repo_id} -> {pin.key}")
        _say(f"pinned {len(pinned_repos)} demo models at their loopback hub heads (awb registry list --home {paths.root})")
        # The tiny ConvNet is a local torchvision weight file, pinned as real torchvision weights are.
        convnet_file = write_tiny_convnext(paths.root / "demo-weights")
        pin = capture_torchvision_pin(registry.get(DEMO_CONVNET).instrument, convnet_file, weights_dir=paths.weights)
        lock.add(pin)
        _say(f"pinned {DEMO_CONVNET} -> {pin.key} (local file {convnet_file.name}, copied into {paths.weights})")
        ocr_pin = pin_installed_tesseract(registry, lock, _say)  # the real engine, not a checkpoint
        caption_pin = pin_demo_captioner(registry, lock, endpoint, paths.hf_cache, _say)
        lock.save(paths.lock)

        home_resource = AwbHome(home=str(paths.root))
        _step("scanning plates")
        catalog, scan = scan_plates(home_resource, [plates_dir or SAMPLE_PLATES])
        _say(f"plates: {scan.summary()}")
        for rejection in scan.rejected:
            _say(f"  rejected {rejection.path}: {rejection.reason}")

        instance = open_instance(paths)
        sync_partitions(instance, home_resource)
        # The tiny Mask2Former carries the real model's `other` license: the demo opts in for it,
        # exactly as a user opts in for a flagged model (AWB_LICENSE_OPT_IN).
        opt_in = [*env_list("AWB_LICENSE_OPT_IN"), DEMO_SEMANTIC_OPT_IN, *([TESSERACT] if ocr_pin else [])]
        _say(f"license opt-in: {', '.join(opt_in)} (license `other`; see `awb registry show {DEMO_SEMANTIC_OPT_IN}`)")
        defs = build_definitions(home=str(paths.root), endpoint=endpoint, offline=False, license_opt_in=opt_in)
        registry = Registry.load(lock_path=paths.lock)
        summary = []
        plate_ids = list(catalog.plates)
        for family in (*EMBEDDING_FAMILIES, *TEXTURE_FAMILIES):
            for entry in registry.family(family):
                if entry.instrument.section != "demo" or entry.active_pin is None:
                    continue
                pin_key = entry.active_pin.key
                _step(f"{family} {pin_key} over {len(plate_ids)} plates")
                started = time.perf_counter()
                runs = materialize_family(defs, instance, family, pin_key, plate_ids)
                seconds = time.perf_counter() - started
                if not all(run.success for run in runs):
                    _say(f"FAILED: {family} {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
                    return 1
                sealed = home_resource.store().sealed_pairs(pin_key)
                summary.append(
                    {
                        "family": family,
                        "pin": pin_key,
                        "plates": len(plate_ids),
                        "records": sum(len(p.record_ids) for p in sealed.values() if p.plate_id in catalog.plates),
                        "runs": len({p.run_id for p in sealed.values()}),
                        "dagster_runs": len(runs),
                        "seconds": f"{seconds:.1f}",
                    }
                )
        _say("")
        _say(text_table(summary, ["family", "pin", "plates", "records", "runs", "dagster_runs", "seconds"]))
        _step("atlas, disagreement and topology report")
        if not _atlas_summary(defs, instance, len(plate_ids)):
            return 1
        if not _sam_summary(defs, instance, registry):
            return 1
        if not foreground_summary(defs, instance, registry, home_resource.store(), _say):
            return 1
        segment_record = _region_summary(defs, instance, registry, home_resource)
        if segment_record is None:
            return 1
        if not box_chain_summary(defs, instance, registry, home_resource.store(), plate_ids, _say):  # text -> boxes -> masks -> embeddings
            return 1
        if not _semantic_summary(defs, instance, registry):
            return 1
        _step("OCR and probes")
        if ocr_pin and not ocr_summary(defs, instance, ocr_pin, plate_ids, _say):
            return 1
        if not caption_summary(defs, instance, home_resource.store(), caption_pin, plate_ids[0], _say):
            return 1
        probe_record = probe_summary(defs, instance, registry, home_resource.store(), _say)
        if probe_record is None or not probe_axes_summary(defs, instance, _say):
            return 1
        if not search_summary(paths, registry, _say):
            return 1
        first_pin = summary[0]["pin"]
        pair = next(iter(home_resource.store().sealed_pairs(first_pin).values()))
        _say(f"\nlineage of one embedding (awb lineage {pair.record_ids[0]} --home {paths.root}):")
        _say(format_lineage(lineage(home_resource.store(), pair.record_ids[0])))
        if segment_record:
            _say(f"\nlineage of one segment embedding (awb lineage {segment_record} --home {paths.root}):")
            _say(format_lineage(lineage(home_resource.store(), segment_record)))
        if probe_record:
            _say(f"\nlineage of one CLIP-fed probe score (awb lineage {probe_record} --home {paths.root}):")
            _say(format_lineage(lineage(home_resource.store(), probe_record)))
        _say(f"\nopen the UI on this home: awb ui --home {paths.root}")
    return 0


def _atlas_summary(defs, instance, plates: int) -> bool:
    """Materialize the atlas, the disagreement and the topology report; print a few lines of each."""
    import dagster as dg

    from awb_dagster.runner import materialize_atlas

    k = max(1, min(10, plates // 2))  # the default k=10 would link every sample plate to every other
    started = time.perf_counter()
    result = materialize_atlas(defs, instance, {"atlas": {"k": k}})
    if not result.success:
        _say(f"FAILED: atlas assets; see the Dagster run {result.run_id}")
        return False

    def metadata(asset: str) -> dict:
        return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata

    atlas, disagreement, topology = (metadata(a) for a in ("atlas", "ensemble_disagreement", "topology_report"))
    graphs = [row.data for row in atlas["graphs"].value.records]
    _say(f"\natlas ({time.perf_counter() - started:.1f} s, run {atlas['run_id'].value}):")
    _say(f"  {len(graphs)} pins x plate scope, k={k}, exact kNN (recall 1.0), PCA maps: {atlas['run_dir'].value}/map-*.png")
    _say(
        f"disagreement, headline {disagreement['headline_pair'].value}: mean kNN Jaccard "
        f"{disagreement['headline_mean_jaccard'].value} (chance {disagreement['headline_chance_jaccard'].value}), "
        f"linear CKA {disagreement['headline_linear_cka'].value}"
    )
    _say(f"topology report ({topology['method'].value}, threshold {topology['threshold'].value}):")
    for row in topology["verdicts"].value.records:
        v = row.data
        _say(f"  {v['position']}. {v['pin']}: change {v['mean_change']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}] -> {v['verdict']}")
    _say(f"  report: {topology['report_file'].value}")
    return True


# Random weights predict low IoU for every mask, so segment-anything's default filters keep none;
# the demo relaxes them (and uses a small grid) so that masks appear. Real pins keep the defaults.
DEMO_SAM_CONFIG = {
    "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_working_side": 256,
}  # fmt: skip


def _sam_summary(defs, instance, registry) -> bool:
    """Materialize ``sam_masks`` for each demo SAM pin; print mask counts per plate."""
    import dagster as dg

    from awb_dagster.runner import materialize_masks

    for entry in [*registry.family("sam"), *registry.family("sam-hq")]:
        if not entry.instrument.demo or entry.active_pin is None:
            continue
        pin_key = entry.active_pin.key
        _step(f"sam masks {pin_key}")
        started = time.perf_counter()
        runs = materialize_masks(defs, instance, pin_key, config=DEMO_SAM_CONFIG)
        if not all(run.success for run in runs):
            _say(f"FAILED: sam_masks {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
            return False
        _say(f"\nsam masks {pin_key} ({time.perf_counter() - started:.1f} s, relaxed filters: {DEMO_SAM_CONFIG}):")
        records = instance.fetch_materializations(dg.AssetKey("sam_masks"), limit=1000).records
        latest = {}
        for record in records:  # newest first
            materialization = record.asset_materialization
            latest.setdefault(materialization.partition, materialization.metadata)
        for _, metadata in sorted(latest.items()):
            if metadata["pin"].value == pin_key:
                _say(
                    f"  {metadata['plate_id'].value}: {metadata['mask_count'].value} masks, "
                    f"coverage {metadata['coverage'].value:.2f}, preview {metadata['preview'].value}"
                )
    return True


# Demo plates are about 640 px on the long side; the relaxed masks of random weights are small.
DEMO_SEGMENT_CONFIG = {"min_region_area": 16}
DEMO_TILE_CONFIG = {"tile_size": 256, "stride": 192, "edge": "shift"}


def _region_summary(defs, instance, registry, home_resource) -> str | None:
    """Segment embeddings (each demo CLIP/DINOv2 pin × each demo SAM pin) and tile embeddings
    (each demo CLIP/DINOv2 pin); prints one row per pin pair. Returns one segment record id
    ("" when no mask passed), None on a failed run."""
    from awb_dagster.provenance.records import segment_pin_key, tile_pair_key
    from awb_dagster.runner import materialize_regions

    def demo_pins(families):
        return [
            entry.active_pin.key
            for family in families
            for entry in registry.family(family)
            if entry.instrument.demo and entry.active_pin is not None
        ]

    store = home_resource.store()
    rows, first_segment = [], ""
    jobs = [("segment", segment_pin_key(e, s), DEMO_SEGMENT_CONFIG) for e in demo_pins(("clip", "dinov2")) for s in demo_pins(("sam",))]
    jobs += [("tile", e, DEMO_TILE_CONFIG) for e in demo_pins(("clip", "dinov2"))]
    for scope, key, config in jobs:
        _step(f"{scope} embeddings {key}")
        started = time.perf_counter()
        runs = materialize_regions(defs, instance, scope, key, config=config)
        if not all(run.success for run in runs):
            _say(f"FAILED: {scope}_embeddings {key}; see the Dagster run {runs[-1].dagster_run_id}")
            return None
        pairs = store.sealed_pairs(key if scope == "segment" else tile_pair_key(key)).values()
        records = [r for p in pairs for r in p.record_ids]
        if scope == "segment" and records and not first_segment:
            first_segment = records[0]
        rows.append(
            {"asset": f"{scope}_embeddings", "key": key, "plates": len({p.plate_id for p in pairs}),
             "records": len(records), "seconds": f"{time.perf_counter() - started:.1f}"}
        )  # fmt: skip
    _say(f"\nregion embeddings (segments: {DEMO_SEGMENT_CONFIG}, tiles: {DEMO_TILE_CONFIG}):")
    _say(text_table(rows, ["asset", "key", "plates", "records", "seconds"]))
    return first_segment


DEMO_SEMANTIC_OPT_IN = "demo-tiny-mask2former"


def _semantic_summary(defs, instance, registry) -> bool:
    """Materialize ``semantic_segmentation`` for each demo Mask2Former pin; print the top classes."""
    import dagster as dg

    from awb_dagster.runner import materialize_semantic

    for entry in registry.family("mask2former"):
        if not entry.instrument.demo or entry.active_pin is None:
            continue
        pin_key = entry.active_pin.key
        _step(f"semantic segmentation {pin_key}")
        started = time.perf_counter()
        runs = materialize_semantic(defs, instance, pin_key)
        if not all(run.success for run in runs):
            _say(f"FAILED: semantic_segmentation {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
            return False
        _say(f"\nsemantic segmentation {pin_key} ({time.perf_counter() - started:.1f} s; class maps kept apart from SAM masks):")
        latest = {}
        for record in instance.fetch_materializations(dg.AssetKey("semantic_segmentation"), limit=1000).records:
            materialization = record.asset_materialization  # newest first
            latest.setdefault(materialization.partition, materialization.metadata)
        for _, metadata in sorted(latest.items()):
            if metadata["pin"].value != pin_key:
                continue
            top = [row.data for row in metadata["top_classes"].value.records][:3]
            classes = ", ".join(f"{row['label']} {row['area_fraction']:.0%}" for row in top)
            _say(f"  {metadata['plate_id'].value}: {metadata['class_count'].value} classes ({classes})")
    return True
