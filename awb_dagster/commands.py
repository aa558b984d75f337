"""The `awb` commands that drive the hub, Dagster and the models: ``pin``, ``plates add``,
``run`` and ``demo``. `awb_dagster.cli` imports this module only when one of them runs, so
the read-only commands (registry, plates list, lineage, runs) start without Dagster, the hub
client or torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from awb_dagster.constants import EMBEDDING_FAMILIES, SAM_FAMILIES, SEMANTIC_FAMILIES
from awb_dagster.paths import HomePaths, resolve_home
from awb_dagster.provenance.report import text_table


def sync_if_instance(paths: HomePaths) -> None:
    """Register new pins/plates as partitions of this home's Dagster instance."""
    from awb_dagster.assets.plates import sync_partitions
    from awb_dagster.instance import open_instance
    from awb_dagster.resources import AwbHome

    added = sync_partitions(open_instance(paths), AwbHome(home=str(paths.root)))
    for name, keys in added.items():
        print(f"registered {len(keys)} new {name} partition(s)")


# --- pins ---------------------------------------------------------------------------------


def pin(args) -> int:
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.hub_client import PinError
    from awb_dagster.registry.pins import capture_pin

    if args.status:
        return _pin_status(args)
    if args.retire:
        return _pin_retire(args)
    paths = HomePaths(resolve_home(args.home))
    registry = Registry.load(lock_path=paths.lock)
    if args.file:
        return _pin_file(args, paths, registry)
    if args.all:
        entries = [e for e in registry.entries if e.instrument.source == "hf"]
    elif args.models:
        entries = [registry.get(m) for m in args.models]
    else:
        print("name a model or use --all", file=sys.stderr)
        return 2
    lock = PinLock.load(paths.lock)
    failed = changed = 0
    for entry in entries:
        try:
            captured = capture_pin(
                entry.instrument,
                revision=args.revision,
                endpoint=args.endpoint,
                token=os.environ.get("HF_TOKEN"),
                cache_dir=paths.hf_cache,  # the pin's files live in this home, nowhere else
                weights_dir=paths.weights,  # url-source weight files live in this home
            )
        except PinError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        added = lock.add(captured)
        changed += added
        print(
            f"{'pinned' if added else 'unchanged'} {entry.instrument.id} -> {captured.key} "
            f"(license {captured.license}, {len(captured.files)} files in {paths.hf_cache})"
        )
    if changed:  # a failed or no-op pin writes nothing: no empty lock, no instance
        lock.save(paths.lock)
        sync_if_instance(paths)
    return 1 if failed else 0


def _pin_file(args, paths: HomePaths, registry) -> int:
    """Pin one torchvision instrument from a local weight file (seed section 11)."""
    from awb_dagster.registry.hub_client import PinError
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.torchvision_weights import capture_torchvision_pin

    if len(args.models) != 1 or args.all or args.revision:
        print("--file pins exactly one model (no --all, no --revision): awb pin KEY --file PATH", file=sys.stderr)
        return 2
    entry = registry.get(args.models[0])
    try:
        captured = capture_torchvision_pin(entry.instrument, Path(args.file), weights_dir=paths.weights)
    except PinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lock = PinLock.load(paths.lock)
    changed = lock.add(captured)
    lock.save(paths.lock)
    print(f"{'pinned' if changed else 'unchanged'} {entry.instrument.id} -> {captured.key} "
          f"({captured.revision_requested}, torchvision {captured.config['library_version']}, license {captured.license})")
    sync_if_instance(paths)
    return 0


def _pin_status(args) -> int:
    """Report whether the hub moved past each model's active pin; changes nothing."""
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pin_status import pin_statuses

    paths = HomePaths(resolve_home(args.home))
    pins = PinLock.load(paths.lock).active_pins()
    if args.models:
        registry = Registry.load(lock_path=paths.lock)
        wanted = {registry.get(m).instrument.id for m in args.models}
        pins = tuple(p for p in pins if p.model_id in wanted)
    statuses = pin_statuses(pins, endpoint=args.endpoint, token=os.environ.get("HF_TOKEN"))
    rows = [{**s.to_row(), "pinned_sha": s.pin.sha[:10], "hub_head": (s.head or "")[:10]} for s in statuses]
    print(text_table(rows, ["model_id", "pin", "followed", "pinned_sha", "hub_head", "state"]))
    for status in statuses:
        if status.error is not None:
            print(f"error: {status.error}", file=sys.stderr)
        elif status.moved:
            print(f"{status.pin.model_id}: the hub's {status.followed} is at {status.head}; "
                  f"`awb pin {status.pin.model_id}` pins it (the old pin and its history stay)")
    if not statuses:
        print(f"no active pins in {paths.lock} (`awb pin MODEL`)")
    return 1 if any(s.error is not None for s in statuses) else 0


def _pin_retire(args) -> int:
    """Mark pins retired: no further automation; partitions, sealed runs and lineage stay."""
    from awb_dagster.registry.lock import PinLock

    paths = HomePaths(resolve_home(args.home))
    lock = PinLock.load(paths.lock)
    for pin_key in args.retire:
        retired = lock.retire_key(pin_key)
        state = "was already retired" if retired.retired else "retired"
        print(f"{pin_key} ({retired.model_id}) {state}: no further automation; its history stays readable")
    lock.save(paths.lock)
    return 0


# --- plates -------------------------------------------------------------------------------


def plates_add(args) -> int:
    from awb_dagster.assets.plates import scan_plates
    from awb_dagster.resources import AwbHome

    paths = HomePaths(resolve_home(args.home))
    home = AwbHome(home=str(paths.root))
    if args.max_pixels:
        home = home.model_copy(update={"max_pixels": args.max_pixels})
    catalog, result = scan_plates(home, [Path(d) for d in args.dirs])
    print(result.summary())
    for rejection in result.rejected:
        print(f"rejected {rejection.path}: {rejection.reason}")
    print(f"catalog: {catalog.path} ({len(catalog.plates)} plates)")
    sync_if_instance(paths)
    return 0


# --- runs and demo ------------------------------------------------------------------------


def run(args) -> int:
    """Materialize one family; SIGINT/SIGTERM stop it cleanly (exit 130): the run in progress is
    marked failed, its slot freed, its sealed chunks kept, and a re-run completes the rest."""
    from awb_dagster.runner import stop_on_signals

    try:
        with stop_on_signals():
            return _run(args)
    except KeyboardInterrupt as interrupt:
        print(f"awb run: stopped by {interrupt.args[0] if interrupt.args else 'SIGINT'}; the plates sealed so far "
              "are kept, and the same `awb run` completes only what is missing", file=sys.stderr)
        return 130


def _run(args) -> int:
    from awb_dagster.assets.factory import job_name
    from awb_dagster.definitions import build_definitions
    from awb_dagster.instance import open_instance
    from awb_dagster.partitions import box_mask_pins_partitions, pins_partitions
    from awb_dagster.runner import (
        fail_runs_of_dead_processes,
        materialize_family,
        materialize_masks,
        materialize_pin_ranges,
        materialize_regions,
        materialize_semantic,
    )

    paths = HomePaths(resolve_home(args.home))
    instance = open_instance(paths)
    for run_id in fail_runs_of_dead_processes(instance):
        print(f"dagster run {run_id}: its process is gone (killed or crashed); marked failed, its gpu slot freed")
    sync_if_instance(paths)
    region_scope = {"segment": "segment", "tile": "tile"}.get(args.family)
    if region_scope:
        partitions_name = f"{region_scope}_pins"
    else:
        partitions_name = box_mask_pins_partitions.name if args.family == "box-masks" else pins_partitions[args.family].name
    pins = instance.get_dynamic_partitions(partitions_name)
    chosen = [args.pin] if args.pin else pins[-1:]
    if not chosen or chosen[0] not in pins:
        print(f"no pin {args.pin or ''} for family {args.family}; pinned: {pins or 'none'} (`awb pin MODEL`)", file=sys.stderr)
        return 2
    plates = None if args.plates in (None, ["all"]) else args.plates
    # The home goes to the resources explicitly: runs execute in this process.
    defs = build_definitions(
        home=str(paths.root), device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        seal_every=args.seal_every,
    )  # fmt: skip
    ok = True
    for pin_key in chosen:
        if region_scope:
            runs = materialize_regions(defs, instance, region_scope, pin_key, plates, config={"force": args.force})
        elif args.family == "sam":
            runs = materialize_masks(defs, instance, pin_key, plates, config={"force": args.force})
        elif args.family in SEMANTIC_FAMILIES:
            runs = materialize_semantic(defs, instance, pin_key, plates, config={"force": args.force})
        elif args.family in EMBEDDING_FAMILIES:
            runs = materialize_family(defs, instance, args.family, pin_key, plates, force=args.force)
        else:  # every other family's own asset (captions, OCR, probes, detections, box masks, ...), default settings
            runs = []
            for asset in _family_assets(args.family):  # Florence-2: one asset per task prompt
                runs += materialize_pin_ranges(defs, instance, job_name(asset), asset, {"force": args.force}, pin_key, plates)
        for result in runs:
            ok &= result.success
            print(f"{'ok' if result.success else 'FAILED'} {pin_key}: {len(result.plate_ids)} plates, dagster run {result.dagster_run_id}")
            for reason in [] if result.success else _step_failures(instance, result.dagster_run_id):
                print(f"  why: {reason}")
    return 0 if ok else 1


def _family_assets(family: str) -> list[str]:
    """The assets `awb run --family` materializes for a family with its own producer(s)."""
    from awb_dagster.producers import FAMILY_PRODUCERS
    from awb_dagster.producers.florence_tasks import FLORENCE_TASK_PRODUCERS

    if family == "box-masks":
        return ["box_masks"]
    if family in FAMILY_PRODUCERS:
        return [FAMILY_PRODUCERS[family].asset_name]
    return [producer.asset_name for producer in FLORENCE_TASK_PRODUCERS if producer.family == family]


def _step_failures(instance, run_id: str) -> list[str]:
    """The error of each failed step of a run, from its event log: the innermost cause (an
    InstrumentError's message, a dg.Failure's description), not Dagster's wrapper."""
    import dagster as dg

    reasons = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        reasons.append(error.message.strip() if error is not None else "(no error recorded)")
    return reasons


def search(args) -> int:
    """Rank the home's plates for a text by a pinned CLIP/SigLIP text tower against sealed embeddings."""
    from awb_dagster.atlas.search import hit_rows, search_home
    from awb_dagster.resources.settings import env_list

    paths = HomePaths(resolve_home(args.home))
    result = search_home(paths, args.text, pin_key=args.pin, k=args.k, license_opt_in=env_list("AWB_LICENSE_OPT_IN"))
    print(f"{result.text!r}: {result.plates} plates ranked by cosine, {result.pin_key} ({result.model_id}), "
          f"sealed image embeddings [{result.image_tag}], text [{result.text_tag}]")  # fmt: skip
    print(text_table(hit_rows(result), ["rank", "plate_id", "score", "record_id"]))
    for reason, count in result.skipped.items():
        print(f"left out: {count} sealed record(s) {reason}")
    print(f"lineage of a hit: awb lineage {result.hits[0].record_id} --home {paths.root}")
    return 0


def demo(args) -> int:
    from awb_dagster.demo.pipeline import run_demo

    if getattr(args, "action", None) == "publish":
        return demo_publish(args)
    return run_demo(resolve_home(args.home), Path(args.plates) if args.plates else None)


def demo_publish(args) -> int:
    """Publish a new revision of a demo model on the home's loopback hub and pin it: the pin-change
    path (`awb ui` then materializes the new pin at its next automation tick) without a real hub."""
    from awb_dagster.demo.checkpoints import DEMO_REPOS, publish_demo_repos
    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.instruments.common import quiet_transformers
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin

    paths = HomePaths(resolve_home(args.home))
    registry = Registry.load(lock_path=paths.lock)
    repo_id = registry.get(args.model).instrument.id
    if repo_id not in DEMO_REPOS:
        print(f"{repo_id} is not a demo model; demo models: {', '.join(DEMO_REPOS)}", file=sys.stderr)
        return 2
    hub = LoopbackHub(paths.hub)
    known = hub.read_repo(repo_id)
    # Each revision gets new random weights: the seed is the number of revisions already published.
    seed = args.seed if args.seed is not None else len(known["commits"]) if known else 0
    print(f"building a tiny {DEMO_REPOS[repo_id]} checkpoint (seed {seed})", flush=True)
    quiet_transformers()  # no shard-writing progress bars on the terminal
    sha = publish_demo_repos(hub, seed=seed, only=[repo_id])[repo_id]
    print(f"published {repo_id} revision {sha} on the home's loopback hub ({paths.hub})")
    with hub:
        pin = capture_pin(registry.get(repo_id).instrument, endpoint=hub.start(), cache_dir=paths.hf_cache)
    lock = PinLock.load(paths.lock)
    if lock.add(pin):
        lock.save(paths.lock)
        sync_if_instance(paths)
    family = registry.get(repo_id).instrument.family
    print(
        f"pinned {repo_id} -> {pin.key} ({len(pin.files)} files in {paths.hf_cache}); a running `awb ui` "
        "materializes it at its next automation tick (AWB_AUTOMATION_CRON), or now: `awb run --family "
        f"{'sam' if family in SAM_FAMILIES else family} --pin {pin.key}`"
    )
    return 0
