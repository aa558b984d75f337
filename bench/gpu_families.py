"""The recently added tiny demo families through the same Dagster path on one device, each sealed
run's manifest read back for the device it names (a device check, not a benchmark):

    python bench/gpu_families.py --device cuda --out OUT/gpu_families.json
    python bench/gpu_families.py --device cpu            # the same path here, to test the script

Tiny random-weight checkpoints of the real architectures (awb_dagster/demo), served by a
loopback hub in a throwaway home, pinned at their heads and run over the first --plates sample
plates: captioners (BLIP, BLIP-2 OPT and FLAN-T5, Qwen2-VL), detectors (DETR, GroundingDINO) and
their boxes turned into SAM box masks, U^2-Net foreground masks, the birder Places365 probe, the
image-fed aesthetic V1 scorer and the open_clip BiomedCLIP embedding family. One line per step:
Dagster run success, sealed records, the device(s) the sealed manifests name, seconds and, on
CUDA, the step's peak CUDA allocation above what was allocated before it (the runs execute in
this process). Exit 1 when a step fails, a sealed run names another device than --device, or a
CUDA step allocated no CUDA memory.
Instance: AWB_INSTANCE_YAML (default dagster.sqlite.yaml: no embedded PostgreSQL needed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

CAPTIONERS = ["awb-demo/tiny-blip", "awb-demo/tiny-blip2-opt", "awb-demo/tiny-blip2-flan-t5", "awb-demo/tiny-qwen2-vl"]
DEMO_MODELS = [
    "awb-demo/tiny-detr", "awb-demo/tiny-grounding-dino", "awb-demo/tiny-sam", "awb-demo/tiny-u2net",
    "awb-demo/tiny-places-birder", "awb-demo/tiny-aesthetic-v1", "awb-demo/tiny-biomedclip",
]  # fmt: skip
CAPTION_CONFIG = {"max_new_tokens": 4}
DETR_CONFIG = {"score_threshold": 0.05}  # random weights score low: keep some boxes
GROUNDING_CONFIG = {"box_threshold": 0.3}
FLORENCE_DEMO_REPO = "awb-demo/tiny-florence2"  # each task prompt its own asset, sealed under its own key
FLORENCE_CONFIG = {"method": "greedy", "num_beams": 1, "max_new_tokens": 4}


def steps(pins: dict[str, str]) -> list[tuple[str, str, str, dict, str]]:
    """(label, asset, pin key, op config, store key) in order: detectors before their box masks."""
    from awb_dagster.provenance.caption_records import florence_pair_key
    from awb_dagster.provenance.records import box_mask_pin_key

    sam = pins["awb-demo/tiny-sam"]
    detr, grounding = pins["awb-demo/tiny-detr"], pins["awb-demo/tiny-grounding-dino"]
    florence = pins[FLORENCE_DEMO_REPO]
    florence_steps = [
        (f"florence2 {task}", f"florence2_{task}", florence, FLORENCE_CONFIG, florence_pair_key(florence, task))
        for task in ("caption", "ocr")
    ]
    return [(*step, step[2]) for step in [
        ("blip", "blip_captions", pins["awb-demo/tiny-blip"], CAPTION_CONFIG),
        ("blip2-opt", "blip2_captions", pins["awb-demo/tiny-blip2-opt"], CAPTION_CONFIG),
        ("blip2-flan-t5", "blip2_captions", pins["awb-demo/tiny-blip2-flan-t5"], CAPTION_CONFIG),
        ("qwen2-vl", "qwen2_vl_captions", pins["awb-demo/tiny-qwen2-vl"], {**CAPTION_CONFIG, "prompt_id": "caption.detailed"}),
        ("detr", "detr_detections", detr, DETR_CONFIG),
        ("detr->box masks", "box_masks", box_mask_pin_key(detr, sam), {}),
        ("grounding-dino", "grounding_dino_detections", grounding, GROUNDING_CONFIG),
        ("grounding-dino->box masks", "box_masks", box_mask_pin_key(grounding, sam), {}),
        ("u2net", "foreground_masks", pins["awb-demo/tiny-u2net"], {}),
        ("places365 (birder)", "places365_logits", pins["awb-demo/tiny-places-birder"], {}),
        ("aesthetic v1", "aesthetic_image_scores", pins["awb-demo/tiny-aesthetic-v1"], {}),
        ("biomedclip (open_clip)", "biomedclip_embeddings", pins["awb-demo/tiny-biomedclip"], {}),
    ]] + florence_steps


def device_matches(named: str | None, wanted: str) -> bool:
    """``cuda`` matches a manifest's ``cuda:0``; ``cuda:1`` only itself; ``cpu`` only ``cpu``."""
    return named is not None and (named == wanted or named.split(":")[0] == wanted)


def run_steps(home_dir: Path, device: str, n_plates: int, say) -> list[dict]:
    from awb_dagster.assets.factory import job_name
    from awb_dagster.assets.plates import scan_plates, sync_partitions
    from awb_dagster.definitions import build_definitions
    from awb_dagster.demo.checkpoints import publish_demo_repos
    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.demo.tiny_captioners import publish_tiny_captioners
    from awb_dagster.demo.tiny_florence import publish_tiny_florence
    from awb_dagster.instance import open_instance
    from awb_dagster.paths import HomePaths
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin
    from awb_dagster.resources import AwbHome
    from awb_dagster.runner import materialize_pin_ranges
    import torch

    paths = HomePaths(home_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hub = LoopbackHub(paths.hub)
    publish_demo_repos(hub, only=DEMO_MODELS)
    publish_tiny_captioners(hub, only=CAPTIONERS)
    publish_tiny_florence(hub)
    plates_dir = paths.root / "plates-in"
    plates_dir.mkdir(exist_ok=True)
    samples = sorted((p for p in SAMPLE_PLATES_DIR.iterdir() if p.suffix in (".jpg", ".png")), key=lambda p: (p.name.startswith("AWKWARD"), p.name))
    for plate in samples[:n_plates]:  # the Audubon plates first, then the awkward ones
        (plates_dir / plate.name).write_bytes(plate.read_bytes())
    results = []
    with hub:
        endpoint = hub.start()
        registry = Registry.load(lock_path=paths.lock)
        lock = PinLock.load(paths.lock)
        pins = {}
        for repo in [*CAPTIONERS, *DEMO_MODELS, FLORENCE_DEMO_REPO]:
            pin = capture_pin(registry.get(repo).instrument, endpoint=endpoint, cache_dir=paths.hf_cache)
            lock.add(pin)
            pins[repo] = pin.key
        lock.save(paths.lock)
        resource = AwbHome(home=str(paths.root))
        catalog, scan = scan_plates(resource, [plates_dir])
        if scan.rejected:
            raise SystemExit(f"sample plates rejected: {scan.rejected}")
        instance = open_instance(paths)
        sync_partitions(instance, resource)
        defs = build_definitions(home=str(paths.root), endpoint=endpoint, offline=False, device=device, batch_size=4)
        plate_ids = list(catalog.plates)
        store = resource.store()
        say(f"home {paths.root}: {len(pins)} tiny models pinned, {len(plate_ids)} plates, set-up {time.perf_counter() - started:.1f}s")
        on_cuda = device.startswith("cuda")
        for label, asset, pin_key, config, store_key in steps(pins):
            if on_cuda:  # the step's own CUDA allocations: the runs execute in this process
                torch.cuda.synchronize()
                baseline = torch.cuda.memory_allocated()
                allocations = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
                torch.cuda.reset_peak_memory_stats()
            step_started = time.perf_counter()
            error = None
            try:
                runs = materialize_pin_ranges(defs, instance, job_name(asset), asset, config, pin_key, plate_ids, log_level="WARNING")
                ok = bool(runs) and all(run.success for run in runs)
            except Exception as exc:  # reported per step; the exit status says it failed
                runs, ok, error = [], False, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - step_started
            cuda_mib = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if on_cuda else None
            # allocations made during the step: the peak alone can stay at the baseline when the step
            # frees a previous step's tensors first (seen on the H200 for BiomedCLIP: 0.0 MiB above it)
            cuda_allocs = torch.cuda.memory_stats().get("allocation.all.allocated", 0) - allocations if on_cuda else 0
            pairs = store.sealed_pairs(store_key, set(plate_ids)).values()
            devices = sorted({str(store.manifest(run_id).payload.get("device")) for run_id in {p.run_id for p in pairs}})
            row = {
                "step": label, "asset": asset, "pin": pin_key, "ok": ok, "plates": len({p.plate_id for p in pairs}),
                "records": sum(len(p.record_ids) for p in pairs), "devices": devices,
                # on CUDA the step must also have allocated device memory, not only named the device
                "device_ok": bool(devices) and all(device_matches(d, device) for d in devices) and (cuda_allocs > 0) == on_cuda,
                "cuda_peak_mib": None if cuda_mib is None else round(cuda_mib, 2), "cuda_allocations": cuda_allocs,
                "seconds": round(seconds, 2), "dagster_runs": [r.dagster_run_id for r in runs], "error": error,
            }  # fmt: skip
            results.append(row)
            say(f"{'ok  ' if ok and row['device_ok'] else 'FAIL'} {label:26s} {asset:26s} plates {row['plates']:2d} "
                f"records {row['records']:4d} device {','.join(devices) or '-':8s} {seconds:6.1f}s"
                + (f" cuda peak {cuda_mib:8.1f} MiB, {cuda_allocs} allocations" if on_cuda else "") + (f"  {error}" if error else ""))  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    parser.add_argument("--plates", type=int, default=4, help="sample plates to run over, Audubon plates first (default 4: one awkward)")
    parser.add_argument("--home", help="state folder (default: a fresh temporary one)")
    parser.add_argument("--out", help="JSON of the per-step results")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWB_INSTANCE_YAML", "dagster.sqlite.yaml")
    for name, value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("HF_HUB_DISABLE_XET", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="awb-gpu-families-"))
    started = time.perf_counter()
    results = run_steps(home, args.device, args.plates, lambda line: print(line, flush=True))
    failed = [r["step"] for r in results if not (r["ok"] and r["device_ok"])]
    total = time.perf_counter() - started
    print(f"{len(results) - len(failed)}/{len(results)} steps sealed on {args.device} in {total:.1f}s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": args.device, "torch": torch.__version__, "seconds": round(total, 2), "steps": results}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
