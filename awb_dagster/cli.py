"""`awb`: registry, pins, plates, runs, lineage, the offline demo and the UI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from awb_dagster.constants import EMBEDDING_FAMILIES, SEGMENTATION_FAMILIES, SEMANTIC_FAMILIES
from awb_dagster.paths import REPO_ROOT, HomePaths, resolve_home


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, "  ".join("-" * widths[c] for c in columns), *body])


def _home_resource(args):
    from awb_dagster.resources import AwbHome

    return AwbHome(home=str(resolve_home(args.home)))


# --- registry -----------------------------------------------------------------------------


def cmd_registry_list(args) -> int:
    from awb_dagster.registry.model import Registry

    registry = Registry.load(lock_path=HomePaths(resolve_home(args.home)).lock)
    rows = [
        {
            "id": e.instrument.id,
            "family": e.instrument.family,
            "role": e.instrument.role,
            "status": e.status,
            "license": e.instrument.license + (" (flagged)" if e.instrument.license_flagged else ""),
            "pin": e.active_pin.key if e.active_pin else "",
        }
        for e in registry.entries
    ]
    if args.json:
        for row in rows:
            row["license"] = row["license"].removesuffix(" (flagged)")
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, ["id", "family", "role", "status", "license", "pin"]))
    return 0


def cmd_registry_show(args) -> int:
    from dataclasses import asdict

    from awb_dagster.registry.model import Registry

    entry = Registry.load(lock_path=HomePaths(resolve_home(args.home)).lock).get(args.model)
    payload = {
        **asdict(entry.instrument),
        "status": entry.status,
        "missing": list(entry.missing),
        "license_flagged": entry.instrument.license_flagged,
        "pins": [p.to_json() for p in entry.pins],
    }
    print(json.dumps(payload, indent=2, default=list))
    return 0


def cmd_registry_check(args) -> int:
    from awb_dagster.registry.model import Registry

    registry = Registry.load(lock_path=HomePaths(resolve_home(args.home)).lock)
    ideas = [e for e in registry.entries if e.status != "admitted"]
    for entry in ideas:
        print(f"{entry.instrument.id}: ideas (missing: {', '.join(entry.missing)})")
    admitted = len(registry.entries) - len(ideas)
    print(f"{admitted} admitted, {len(ideas)} in ideas, {len(registry.entries)} in the registry")
    return 0


def cmd_registry_appendix(args) -> int:
    from awb_dagster.registry.appendix import render_appendix
    from awb_dagster.registry.model import Registry

    text = render_appendix(Registry.load(lock_path=HomePaths(resolve_home(args.home)).lock))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


# --- pins ---------------------------------------------------------------------------------


def cmd_pin(args) -> int:
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import PinError, capture_pin

    if args.status:
        return _pin_status(args)
    if args.retire:
        return _pin_retire(args)
    paths = HomePaths(resolve_home(args.home))
    registry = Registry.load(lock_path=paths.lock)
    if args.all:
        entries = [e for e in registry.entries if e.instrument.source == "hf"]
    elif args.models:
        entries = [registry.get(m) for m in args.models]
    else:
        print("name a model or use --all", file=sys.stderr)
        return 2
    lock = PinLock.load(paths.lock)
    failed = 0
    for entry in entries:
        try:
            pin = capture_pin(
                entry.instrument,
                revision=args.revision,
                endpoint=args.endpoint,
                token=os.environ.get("HF_TOKEN"),
                weights_dir=paths.weights,  # url-source weight files live in this home
            )
        except PinError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        changed = lock.add(pin)
        print(f"{'pinned' if changed else 'unchanged'} {entry.instrument.id} -> {pin.key} (license {pin.license})")
    lock.save(paths.lock)
    _sync_if_instance(paths)
    return 1 if failed else 0


def _pin_status(args) -> int:
    """Report whether the hub moved past each model's active pin; changes nothing."""
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import pin_statuses

    paths = HomePaths(resolve_home(args.home))
    pins = PinLock.load(paths.lock).active_pins()
    if args.models:
        registry = Registry.load(lock_path=paths.lock)
        wanted = {registry.get(m).instrument.id for m in args.models}
        pins = tuple(pin for pin in pins if pin.model_id in wanted)
    statuses = pin_statuses(pins, endpoint=args.endpoint, token=os.environ.get("HF_TOKEN"))
    rows = [{**s.to_row(), "pinned_sha": s.pin.sha[:10], "hub_head": (s.head or "")[:10]} for s in statuses]
    print(_table(rows, ["model_id", "pin", "followed", "pinned_sha", "hub_head", "state"]))
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
        pin = lock.retire_key(pin_key)
        state = "was already retired" if pin.retired else "retired"
        print(f"{pin_key} ({pin.model_id}) {state}: no further automation; its history stays readable")
    lock.save(paths.lock)
    return 0


def _sync_if_instance(paths: HomePaths) -> None:
    """Register new pins/plates as partitions when this home has a Dagster instance."""
    from awb_dagster.assets.plates import sync_partitions
    from awb_dagster.instance import open_instance
    from awb_dagster.resources import AwbHome

    added = sync_partitions(open_instance(paths), AwbHome(home=str(paths.root)))
    for name, keys in added.items():
        print(f"registered {len(keys)} new {name} partition(s)")


# --- plates -------------------------------------------------------------------------------


def cmd_plates_add(args) -> int:
    from awb_dagster.assets.plates import scan_plates

    home = _home_resource(args)
    if args.max_pixels:
        home = home.model_copy(update={"max_pixels": args.max_pixels})
    catalog, result = scan_plates(home, [Path(d) for d in args.dirs])
    print(result.summary())
    for rejection in result.rejected:
        print(f"rejected {rejection.path}: {rejection.reason}")
    print(f"catalog: {catalog.path} ({len(catalog.plates)} plates)")
    _sync_if_instance(home.paths)
    return 0


def cmd_plates_list(args) -> int:
    catalog = _home_resource(args).catalog()
    rows = [
        {"plate_id": p.plate_id, "sha256": p.sha256[:16], "size": f"{p.width}x{p.height}", "mode": p.mode, "path": str(p.path)}
        for p in catalog.plates.values()
    ]
    print(_table(rows, ["plate_id", "sha256", "size", "mode", "path"]))
    return 0


# --- runs and lineage ---------------------------------------------------------------------


def cmd_run(args) -> int:
    from awb_dagster.definitions import build_definitions
    from awb_dagster.instance import open_instance
    from awb_dagster.partitions import pins_partitions
    from awb_dagster.runner import materialize_family, materialize_masks, materialize_regions, materialize_semantic

    paths = HomePaths(resolve_home(args.home))
    os.environ["AWB_HOME"] = str(paths.root)
    instance = open_instance(paths)
    _sync_if_instance(paths)
    region_scope = {"segment": "segment", "tile": "tile"}.get(args.family)
    partitions_name = f"{region_scope}_pins" if region_scope else pins_partitions[args.family].name
    pins = instance.get_dynamic_partitions(partitions_name)
    chosen = [args.pin] if args.pin else pins[-1:]
    if not chosen or chosen[0] not in pins:
        print(f"no pin {args.pin or ''} for family {args.family}; pinned: {pins or 'none'} (`awb pin MODEL`)", file=sys.stderr)
        return 2
    plates = None if args.plates in (None, ["all"]) else args.plates
    defs = build_definitions(home=str(paths.root), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    ok = True
    for pin_key in chosen:
        if region_scope:
            runs = materialize_regions(defs, instance, region_scope, pin_key, plates, config={"force": args.force})
        elif args.family == "sam":
            runs = materialize_masks(defs, instance, pin_key, plates, config={"force": args.force})
        elif args.family in SEMANTIC_FAMILIES:
            runs = materialize_semantic(defs, instance, pin_key, plates, config={"force": args.force})
        else:
            runs = materialize_family(defs, instance, args.family, pin_key, plates, force=args.force)
        for run in runs:
            ok &= run.success
            print(f"{'ok' if run.success else 'FAILED'} {pin_key}: {len(run.plate_ids)} plates, dagster run {run.dagster_run_id}")
    return 0 if ok else 1


def cmd_lineage(args) -> int:
    from awb_dagster.provenance.lineage import lineage

    info = lineage(_home_resource(args).store(), args.record_id)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_lineage(info))
    return 0


def _record_shape(info: dict) -> str:
    mask = info.get("mask")
    if mask:
        return f"mask area {mask['area']}, bbox XYWH {mask['bbox']}"
    semantic = info.get("class")
    if semantic:
        return f"class {semantic['class_id']} {semantic['label']!r}, {semantic['pixel_count']} pixels"
    return f"{info['vector_dim']}-d"


def format_lineage(info: dict) -> str:
    plate, model, artifact = info["plate"], info["model"], info["artifact"]
    lines = [
        f"record      {info['record_id']} ({info['scope']}, {_record_shape(info)})",
        f"plate       {plate['plate_id']}  {plate['path']}",
        f"plate sha   {plate['sha256']}",
        f"model       {model['model_id']} @ {model['sha']}  (pin {model['pin_key']}, license {model['license']})",
        f"preprocess  {info['preprocess_tag']}",
        f"run         {info['run_id']}  (dagster run {info['dagster_run_id']})",
        f"artifact    {artifact['path']}",
        f"sha256      {artifact['sha256']}  ({'verified' if artifact['verified'] else 'MISMATCH'})",
    ]
    if info.get("scope") == "tile":
        lines.insert(1, f"tile        {info['region_ref']} (XYWH, plate pixels)")
    region = info.get("region")
    if region:
        lines.append("region      the mask this segment was cut from:")
        lines.extend("  " + line for line in format_lineage(region).splitlines())
    return "\n".join(lines)


def cmd_runs_verify(args) -> int:
    """Re-hash sealed runs (one, or all) against their manifests; non-zero exit on any problem."""
    from awb_dagster.provenance.verify import verify_run

    store = _home_resource(args).store()
    manifests = [store.manifest(args.run_id)] if args.run_id else list(store.manifests())
    bad = 0
    for manifest in manifests:
        problems = verify_run(manifest)
        bad += bool(problems)
        outputs = len(manifest.payload["outputs"])
        print(f"{'ok' if not problems else 'FAILED'} {manifest.run_id} ({outputs} artifacts)")
        for problem in problems:
            print(f"  {problem.kind} {manifest.run_dir / problem.path}: {problem.detail}")
    if not args.run_id:
        for run_dir in store.unsealed_runs():
            print(f"unsealed (interrupted, never read as complete, not verified): {run_dir}")
    if not manifests:
        print(f"no sealed runs under {store.runs_dir}")
    if bad:
        print(f"{bad} of {len(manifests)} sealed run(s) do not match their manifest", file=sys.stderr)
    return 1 if bad else 0


def cmd_runs(args) -> int:
    store = _home_resource(args).store()
    rows = [
        {
            "run_id": m.run_id,
            "kind": m.payload["kind"],
            "pairs": len(m.pairs),
            "failures": len(m.payload.get("failures", [])),
            "dagster_run": (m.payload.get("dagster_run_id") or "")[:8],
            "sealed_at": m.payload["sealed_at"],
        }
        for m in store.manifests()
    ]
    print(_table(rows, ["run_id", "kind", "pairs", "failures", "dagster_run", "sealed_at"]))
    for run_dir in store.unsealed_runs():
        print(f"unsealed (interrupted, never read as complete): {run_dir}")
    return 0


# --- demo and ui --------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from awb_dagster.demo.pipeline import run_demo

    return run_demo(resolve_home(args.home), Path(args.plates) if args.plates else None)


def cmd_ui(args) -> int:
    from awb_dagster.instance import prepare_dagster_home

    paths = HomePaths(resolve_home(args.home))
    env = {**os.environ, "AWB_HOME": str(paths.root), "DAGSTER_HOME": str(prepare_dagster_home(paths))}
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.port), "-h", args.host]
    print(f"DAGSTER_HOME={env['DAGSTER_HOME']} AWB_HOME={paths.root}\n$ {' '.join(command)}")
    return subprocess.call(command, env=env, cwd=REPO_ROOT)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's --home must not reset one given before the subcommand.
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="state folder (store, instance, lock, catalog); default $AWB_HOME or ./.awb",
    )
    parser = argparse.ArgumentParser(prog="awb", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    registry = sub.add_parser("registry", help="the instrument roster").add_subparsers(dest="action", required=True)
    p = registry.add_parser("list", parents=[common], help="one row per instrument")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_registry_list)
    p = registry.add_parser("show", parents=[common], help="one instrument, every field")
    p.add_argument("model")
    p.set_defaults(func=cmd_registry_show)
    registry.add_parser("check", parents=[common], help="admission gate report").set_defaults(func=cmd_registry_check)
    p = registry.add_parser("appendix", parents=[common], help="Markdown model cards and dependency registry")
    p.add_argument("--out")
    p.set_defaults(func=cmd_registry_appendix)

    p = sub.add_parser("pin", parents=[common], help="capture pins from the hub into the lock file")
    p.add_argument("models", nargs="*")
    p.add_argument("--all", action="store_true", help="every Hugging Face model of the registry")
    p.add_argument("--revision", help="pin this revision (sha, tag or branch) instead of the head")
    p.add_argument("--endpoint", help="hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    p.add_argument(
        "--status", action="store_true", help="report whether the hub moved past each active pin; changes nothing"
    )
    p.add_argument(
        "--retire", nargs="+", metavar="PIN_KEY", help="retire pins: no further automation, history stays"
    )
    p.set_defaults(func=cmd_pin)

    plates = sub.add_parser("plates", help="the plate catalog").add_subparsers(dest="action", required=True)
    p = plates.add_parser("add", parents=[common], help="scan folders and register their plates")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--max-pixels", type=int, help="reject images larger than this (decompression-bomb guard)")
    p.set_defaults(func=cmd_plates_add)
    plates.add_parser("list", parents=[common]).set_defaults(func=cmd_plates_list)

    p = sub.add_parser("run", parents=[common], help="materialize one family for real pins through Dagster")
    p.add_argument(
        "--family",
        required=True,
        choices=[*EMBEDDING_FAMILIES, *SEGMENTATION_FAMILIES, *SEMANTIC_FAMILIES, "segment", "tile"],
        help="an embedding family, sam (SAM and SAM-HQ pins), mask2former (semantic class maps; its "
        "`other` license needs AWB_LICENSE_OPT_IN), or segment/tile (region embeddings)",
    )
    p.add_argument(
        "--pin",
        help="pin key (default: the newest pin of the family); for segment: <embedding pin>~<sam pin>, "
        "for tile: an embedding pin",
    )
    p.add_argument("--plates", nargs="+", help="'all' (default) or plate ids")
    p.add_argument("--force", action="store_true", help="recompute pairs already sealed")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("lineage", parents=[common], help="trace a record to plate bytes, pin, run and artifact")
    p.add_argument("record_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("runs", parents=[common], help="sealed and unsealed runs")
    p.set_defaults(func=cmd_runs)
    p = p.add_subparsers(dest="action").add_parser(
        "verify", parents=[common], help="re-hash sealed artifacts against their manifests"
    )
    p.add_argument("run_id", nargs="?", help="one run (default: every sealed run)")
    p.set_defaults(func=cmd_runs_verify)

    p = sub.add_parser("demo", parents=[common], help="the whole chain offline on tiny checkpoints")
    p.add_argument("--plates", help="plate folder (default: the sample plates shipped in the package)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", parents=[common], help="start the Dagster UI on this home")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    from awb_dagster.errors import user_errors

    args = build_parser().parse_args(argv)
    # Not set_defaults(home=None): that would change the --home action every subcommand shares.
    args.home = getattr(args, "home", None)
    with user_errors():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
