"""`awb`: registry, pins, plates, runs, lineage, the offline demo and the UI."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from awb_dagster.constants import PIN_FAMILIES
from awb_dagster.paths import REPO_ROOT, HomePaths, resolve_home
from awb_dagster.provenance.report import format_lineage, text_table

# The read-only commands below (registry, plates list, lineage, runs) read the home's files
# through the Dagster-free layers only. pin, plates add, run and demo live in
# awb_dagster.commands, imported when one of them runs: it brings Dagster, the hub client and
# torch, seconds and a gigabyte that a lineage lookup must not pay.


def _paths(args) -> HomePaths:
    return HomePaths(resolve_home(args.home))


def _store(args):
    from awb_dagster.provenance.store import RunStore

    return RunStore(_paths(args).store)


def _registry(args):
    from awb_dagster.registry.model import Registry

    return Registry.load(lock_path=_paths(args).lock)


# --- registry -----------------------------------------------------------------------------


def cmd_registry_list(args) -> int:
    rows = [
        {
            "id": e.instrument.id,
            "family": e.instrument.family,
            "role": e.instrument.role,
            "status": e.status,
            "license": e.instrument.license + (" (flagged)" if e.instrument.license_flagged else ""),
            "pin": e.active_pin.key if e.active_pin else "",
        }
        for e in _registry(args).entries
    ]
    if args.json:
        for row in rows:
            row["license"] = row["license"].removesuffix(" (flagged)")
        print(json.dumps(rows, indent=2))
    else:
        print(text_table(rows, ["id", "family", "role", "status", "license", "pin"]))
    return 0


def cmd_registry_show(args) -> int:
    from dataclasses import asdict

    entry = _registry(args).get(args.model)
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
    registry = _registry(args)
    ideas = [e for e in registry.entries if e.status != "admitted"]
    for entry in ideas:
        print(f"{entry.instrument.id}: ideas (missing: {', '.join(entry.missing)})")
    admitted = len(registry.entries) - len(ideas)
    print(f"{admitted} admitted, {len(ideas)} in ideas, {len(registry.entries)} in the registry")
    return 0


def cmd_registry_appendix(args) -> int:
    from awb_dagster.registry.appendix import render_appendix

    text = render_appendix(_registry(args))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


# --- pins and plates ----------------------------------------------------------------------


def cmd_pin(args) -> int:
    from awb_dagster.commands import pin  # heavy: see the note at the top

    return pin(args)


def cmd_plates_add(args) -> int:
    from awb_dagster.commands import plates_add  # heavy: registers partitions with Dagster

    return plates_add(args)


def cmd_plates_list(args) -> int:
    from awb_dagster.plates.catalog import PlateCatalog

    catalog = PlateCatalog.load(_paths(args).catalog)
    rows = [
        {"plate_id": p.plate_id, "sha256": p.sha256[:16], "size": f"{p.width}x{p.height}", "mode": p.mode, "path": str(p.path)}
        for p in catalog.plates.values()
    ]
    print(text_table(rows, ["plate_id", "sha256", "size", "mode", "path"]))
    return 0


# --- runs and lineage ---------------------------------------------------------------------


def cmd_run(args) -> int:
    from awb_dagster.commands import run  # heavy: Dagster and the models

    return run(args)


def cmd_lineage(args) -> int:
    from awb_dagster.provenance.lineage import lineage

    info = lineage(_store(args), args.record_id)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_lineage(info))
    return 0


def cmd_search(args) -> int:
    from awb_dagster.commands import search  # heavy: torch and the text tower

    return search(args)


def cmd_runs_verify(args) -> int:
    """Re-hash sealed runs (one, or all) against their manifests and each manifest against the
    seal log; non-zero exit on any problem. ``--adopt`` records unlogged runs whose files match."""
    from awb_dagster.hashing import sha256_file
    from awb_dagster.provenance.store import MANIFEST_NAME
    from awb_dagster.provenance.verify import verify_run

    store = _store(args)
    manifests = [store.manifest(args.run_id)] if args.run_id else list(store.manifests())
    seal_log = store.seal_log()
    bad = 0
    for manifest in manifests:
        problems = verify_run(manifest, seal_log)
        if args.adopt and [p.kind for p in problems] == ["unlogged"]:
            entry = store.log_seal(
                manifest.run_id, sha256_file(manifest.run_dir / MANIFEST_NAME), manifest.payload.get("sealed_at", "")
            )
            print(f"adopted {manifest.run_id} (seal log line {entry.line})")
            continue
        bad += bool(problems)
        outputs = len(manifest.payload["outputs"])
        print(f"{'ok' if not problems else 'FAILED'} {manifest.run_id} ({outputs} artifacts)")
        for problem in problems:
            print(f"  {problem.kind} {manifest.run_dir / problem.path}: {problem.detail}")
    if not args.run_id:
        for damaged in store.damaged_manifests():
            bad += 1
            print(f"DAMAGED {damaged}")
        for run_dir in store.unsealed_runs():
            print(f"unsealed (interrupted, never read as complete, not verified): {run_dir}")
    for line in seal_log.breaks:
        print(f"seal log broken: {line}")
    if seal_log.exists:
        print(f"seal log {seal_log.path}: {len(seal_log.entries)} sealed runs, head {seal_log.head}")
    if not manifests and not bad:
        print(f"no sealed runs under {store.runs_dir}")
    if bad or seal_log.breaks:
        print(
            f"{bad} sealed run(s) do not match their manifest or the seal log"
            + (f"; the seal log is broken in {len(seal_log.breaks)} place(s)" if seal_log.breaks else ""),
            file=sys.stderr,
        )
    return 1 if bad or seal_log.breaks else 0


def cmd_runs(args) -> int:
    store = _store(args)
    rows = [
        {
            "run_id": m.run_id,
            "kind": m.payload.get("kind", ""),
            "pairs": len(m.pairs),
            "failures": len(m.payload.get("failures", [])),
            "dagster_run": (m.payload.get("dagster_run_id") or "")[:8],
            "sealed_at": m.payload.get("sealed_at", ""),
        }
        for m in store.manifests()
    ]
    print(text_table(rows, ["run_id", "kind", "pairs", "failures", "dagster_run", "sealed_at"]))
    for damaged in store.damaged_manifests():
        print(f"damaged (skipped by every command): {damaged}")
    for run_dir in store.unsealed_runs():
        print(f"unsealed (interrupted, never read as complete): {run_dir}")
    return 0


# --- demo and ui --------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from awb_dagster.commands import demo  # heavy: the loopback hub, Dagster and the models
    from awb_dagster.demo.quiet import demo_log_path, stderr_to_log

    if getattr(args, "verbose", True):
        return demo(args)
    log = demo_log_path(_paths(args))
    print(f"awb demo: library and Dagster logs go to {log} (--verbose: to the terminal)", flush=True)
    with stderr_to_log(log):
        code = demo(args)
    if code:
        print(f"awb demo failed; the details are in {log}", file=sys.stderr)
    return code


def cmd_ui(args) -> int:
    from awb_dagster.instance import dagster_env
    from awb_dagster.ui_process import run_in_own_group

    paths = HomePaths(resolve_home(args.home))
    env = dagster_env(paths)
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.port), "-h", args.host]
    print(f"DAGSTER_HOME={env['DAGSTER_HOME']} AWB_HOME={paths.root}\n$ {' '.join(command)}")
    # Run in DAGSTER_HOME: from the repo root, dagster dev would warn that the root dagster.yaml
    # is not the one in DAGSTER_HOME (this one is that file with the home filled in). Its own
    # process group: SIGINT and SIGTERM stop it and everything it started, even in the background.
    return run_in_own_group(command, env=env, cwd=env["DAGSTER_HOME"])


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
    p.add_argument(
        "--file", help="torchvision weights: the downloaded weight file (checked against the hash prefix in its "
        "published name, then copied into the home); no download happens"
    )
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
        choices=[*PIN_FAMILIES, "segment", "tile", "box-masks"],
        help="a family: its own asset with default settings (an embedding family; sam for SAM and SAM-HQ pins; "
        "mask2former, whose `other` license needs AWB_LICENSE_OPT_IN; OCR, probes, detections, captions, ...), or "
        "segment/tile (region embeddings), box-masks (<detector pin>~<sam pin>)",
    )
    p.add_argument(
        "--pin",
        help="pin key (default: the newest pin of the family); for segment: <embedding pin>~<sam pin>, "
        "for tile: an embedding pin, for box-masks: <detector pin>~<sam pin>",
    )
    p.add_argument("--plates", nargs="+", help="'all' (default) or plate ids")
    p.add_argument("--force", action="store_true", help="recompute pairs already sealed")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--seal-every", type=int, help="plates per sealed run: a killed run loses at most these (default: 4 batches, >= 64)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("lineage", parents=[common], help="trace a record to plate bytes, pin, run and artifact")
    p.add_argument("record_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("search", parents=[common], help="rank plates by a text (CLIP/SigLIP text tower vs sealed embeddings)")
    p.add_argument("text")
    p.add_argument("--pin", help="a CLIP or SigLIP pin key (default: the first active CLIP pin)")
    p.add_argument("--k", type=int, default=10, help="hits to print (default 10)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("runs", parents=[common], help="sealed and unsealed runs")
    p.set_defaults(func=cmd_runs)
    p = p.add_subparsers(dest="action").add_parser(
        "verify", parents=[common], help="re-hash sealed artifacts against their manifests"
    )
    p.add_argument("run_id", nargs="?", help="one run (default: every sealed run)")
    p.add_argument(
        "--adopt",
        action="store_true",
        help="record in the seal log the runs sealed before it whose files match their manifest",
    )
    p.set_defaults(func=cmd_runs_verify)

    p = sub.add_parser("demo", parents=[common], help="the whole chain offline on tiny checkpoints")
    p.add_argument("--plates", help="plate folder (default: the sample plates shipped in the package)")
    p.add_argument(
        "--verbose", action="store_true", help="library and Dagster logs on the terminal, not in <home>/logs/"
    )
    p.set_defaults(func=cmd_demo)
    p = p.add_subparsers(dest="action").add_parser(
        "publish",
        parents=[common],
        help="publish a new revision of a demo model on the home's loopback hub and pin it (the pin-change path)",
    )
    p.add_argument("model", help="a demo model, e.g. awb-demo/tiny-dinov2 (`awb registry list`)")
    p.add_argument("--seed", type=int, help="weights seed (default: the number of revisions already published)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", parents=[common], help="start the Dagster UI on this home")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_ui)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The errors users fix themselves, imported when one is raised: a lineage lookup must not
    import the hub client (registry.hub_client) just to name its error."""
    from awb_dagster.instruments.common import InstrumentError
    from awb_dagster.plates.catalog import CatalogError
    from awb_dagster.provenance.store import StoreError
    from awb_dagster.registry.lock import LockError
    from awb_dagster.registry.roster import RegistryError
    from awb_dagster.registry.hub_client import PinError

    return (RegistryError, LockError, PinError, CatalogError, StoreError, InstrumentError, FileNotFoundError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Exit with status 2 and the error's one-line message, not a traceback, for the errors users
    fix themselves."""
    try:
        yield
    except _user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Not set_defaults(home=None): that would change the --home action every subcommand shares.
    args.home = getattr(args, "home", None)
    with user_errors():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
