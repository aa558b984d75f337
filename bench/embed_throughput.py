"""Throughput of the Dagster single-run backfill path against a bare loop of the same
instrument over the same plate files, at two plate counts so fixed costs cancel.

    python bench/embed_throughput.py                                   # synthetic plates, CLIP-B/32 size, CPU
    python bench/embed_throughput.py --plates ../shared/plates --replicate --arch tiny-clip --sizes 100,400
    python bench/embed_throughput.py --arch clip-l14 --device cuda --dtype bfloat16 --batch-size 128 \\
        --decoder torchvision --sizes 128,384

The instrument is the tiny demo CLIP (`tiny-clip`) or a real-size architecture with random
weights (speed does not depend on weight values), published on a loopback hub under its
registry id and pinned like any other model. Plates: a folder of real plates (`--plates DIR`;
with `--replicate`, files are repeated until there are enough, each repeat made distinct by a
comment: a JPEG COM segment or a PNG tEXt chunk, so sha256 differs while pixels and decode work
stay identical), else synthetic JPEGs sized like the Audubon scans.

Figures, per plate count N (the first N plates of the catalog, one Dagster run):
  pipeline   `materialize_family` wall time: run creation, model load, the asset's stream,
             sealing, per-partition materializations and checks.
  stream     the asset's plate stream (read, sha256, decode, processor, model, Parquet), from
             the sealed run's manifest (`timing.stream_seconds`).
  bare       a plain loop with the same embedder: the same decode workers and prefetch
             (instruments.streaming.prefetch_batches), `load_plate` + `pixel_values` + `embed`,
             vectors kept in memory; no Dagster, no store. Model loaded beforehand.
  event log  from the run's Dagster events: `span` = first to last event of the run,
             `outside_stream` = span - stream (Dagster bookkeeping, model load, sealing).
Between the two counts: marginal ms per plate = delta(time) / delta(N) for pipeline, stream
and bare, and `dagster_ms_per_partition` = delta(event-log span - stream) / delta(N): what
each extra partition costs outside the plate stream (planned events, materializations, check
inputs, sealing and metadata), with model load and run setup cancelled out.
`decoder` is the declared decoder; `preprocess_tags` counts the tags sealed plates carry, so
the decoder that actually made each plate's pixels is visible (fallback plates show PIL).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCHS = {
    # name: (registry id, family)
    "tiny-clip": ("awb-demo/tiny-clip", "clip"),
    "clip-b32": ("openai/clip-vit-base-patch32", "clip"),
    "clip-l14": ("openai/clip-vit-large-patch14", "clip"),
    "dinov2-b": ("facebook/dinov2-base", "dinov2"),
    "dinov2-l": ("facebook/dinov2-large", "dinov2"),
}
INSTANCE_KINDS = ("sqlite", "embedded-postgres", "postgres")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


def arch_repo(arch: str) -> dict[str, bytes]:
    """Files of the tiny demo CLIP, or of a real-size vision architecture (random weights)."""
    import transformers as tf

    if arch == "tiny-clip":
        from awb_dagster.demo.checkpoints import build_tiny_repo

        return build_tiny_repo("clip")
    torch.manual_seed(0)
    if arch.startswith("clip"):
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        if arch == "clip-b32":
            vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224, projection_dim=512)
            projection = 512
        else:
            vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768)
            projection = 768
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    else:
        layers, hidden, heads = (12, 768, 12) if arch == "dinov2-b" else (24, 1024, 16)
        model = tf.Dinov2Model(tf.Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=518, patch_size=14))
        processor = tf.BitImageProcessor(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
            resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        )  # fmt: skip
    model = model.to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def synthetic_plates(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Distinct JPEG scans of ``size`` (smooth colour fields plus grain, quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size

    def make(index: int) -> Path:
        path = folder / f"synthetic_{index:04d}.jpg"
        if path.exists():
            return path
        rng = np.random.default_rng(index)
        coarse = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
        Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
        return path

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(make, range(count)))


def with_comment(data: bytes, suffix: str, text: bytes) -> bytes:
    """The same image with a comment added (pixels unchanged): JPEG COM after SOI, PNG tEXt
    before IEND."""
    if suffix in (".jpg", ".jpeg"):
        if data[:2] != b"\xff\xd8":
            raise ValueError("not a JPEG (no SOI marker)")
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if suffix == ".png":
        end = data.rindex(b"IEND") - 4
        body = b"tEXt" + b"Comment\x00" + text
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:end] + chunk + data[end:]
    raise ValueError(f"cannot add a comment to a {suffix} file; use JPEG or PNG sources")


def real_plates(source: Path, folder: Path, count: int, replicate: bool) -> tuple[list[Path], int]:
    """``count`` plate files from ``source`` (sorted), repeated with comments when ``replicate``
    and the folder holds fewer. Returns the files and how many distinct sources they came from."""
    sources = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        raise SystemExit(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(sources) < count and not replicate:
        raise SystemExit(f"{source} holds {len(sources)} plates, fewer than {count}: add --replicate or lower --sizes")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        original = sources[index % len(sources)]
        path = folder / f"r{index:04d}_{original.name}"
        if not path.exists():
            data = original.read_bytes()
            if index >= len(sources):
                data = with_comment(data, original.suffix.lower(), f"awb bench replica {index}".encode())
            path.write_bytes(data)
        files.append(path)
    return files, min(len(sources), count)


def instance_source(kind: str) -> Path:
    """The instance yaml of the checkout for ``kind``, recognized by its storage classes."""
    from awb_dagster.paths import REPO_ROOT

    def matches(path: Path, *needles: str) -> bool:
        return path.is_file() and all(n in path.read_text() for n in needles)

    if kind == "sqlite":
        found = [p for p in (REPO_ROOT / "dagster.sqlite.yaml", REPO_ROOT / "dagster.yaml") if matches(p, "sqlite")]
    elif kind == "embedded-postgres":
        found = [p for p in (REPO_ROOT / "dagster.yaml",) if matches(p, "EmbeddedPostgres")]
    else:
        if "DAGSTER_PG_HOST" not in os.environ:
            raise SystemExit("--instance postgres reads DAGSTER_PG_HOST/PORT/DB/USER/PASSWORD; export them first")
        found = [p for p in (REPO_ROOT / "dagster.postgres.yaml",) if matches(p, "postgres")]
    if not found:
        raise SystemExit(f"no instance yaml for {kind} in {REPO_ROOT} (this checkout does not provide that kind yet)")
    return found[0]


def open_bench_instance(home, kind: str):
    """The home's instance of ``kind`` through awb_dagster.instance's public functions."""
    from awb_dagster.instance import instance_yaml, open_instance

    source = instance_source(kind)
    if "source" in inspect.signature(open_instance).parameters:
        return open_instance(home, source)
    # Hook for checkouts whose open_instance reads only AWB_INSTANCE_YAML.
    if instance_yaml().resolve() != source.resolve():
        raise SystemExit(f"this checkout opens {instance_yaml()}; run with AWB_INSTANCE_YAML={source.name}")
    return open_instance(home)


def event_log_timing(instance, run_id: str, stream_s: float) -> dict:
    """Spans of the run's Dagster events (paged: the event log returns at most 10,000 per call)."""
    events, cursor = [], None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, limit=10_000)
        events.extend(record.event_log_entry for record in page.records)
        cursor = page.cursor
        if not page.has_more:
            break
    stamps = [e.timestamp for e in events]
    by_type = Counter(e.dagster_event.event_type_value for e in events if e.dagster_event)

    def first(kind: str) -> float | None:
        return next((e.timestamp for e in events if e.dagster_event and e.dagster_event.event_type_value == kind), None)

    def last(kind: str) -> float | None:
        return next((e.timestamp for e in reversed(events) if e.dagster_event and e.dagster_event.event_type_value == kind), None)

    span = max(stamps) - min(stamps)
    step_start, step_end = first("STEP_START") or min(stamps), first("STEP_SUCCESS") or max(stamps)
    first_mat, last_mat = first("ASSET_MATERIALIZATION") or step_end, last("ASSET_MATERIALIZATION") or step_end
    return {
        "events": len(events),
        "planned_events": by_type.get("ASSET_MATERIALIZATION_PLANNED", 0),
        "materializations": by_type.get("ASSET_MATERIALIZATION", 0),
        "span_s": round(span, 3),
        "before_step_s": round(step_start - min(stamps), 3),
        "step_s": round(step_end - step_start, 3),
        "step_to_first_materialization_s": round(first_mat - step_start, 3),
        "materializations_span_s": round(last_mat - first_mat, 3),
        "last_materialization_to_step_success_s": round(step_end - last_mat, 3),
        "outside_stream_s": round(span - stream_s, 3),
    }


def bare_loop(embedder, plates, *, batch_size: int, workers: int, max_pixels: int, sync) -> float:
    """Seconds for the plain loop over ``plates`` (see the module docstring)."""
    from awb_dagster.instruments.streaming import prefetch_batches

    def prepare(plate):
        return embedder.load_plate(plate.path, plate.sha256, max_pixels=max_pixels, plate_format=plate.format, plate_mode=plate.mode)

    vectors = []
    started = time.perf_counter()
    for batch in prefetch_batches(plates, prepare, batch_size=batch_size, workers=workers, prefetch_batches=2):
        for slot in batch:
            if slot.error is not None:
                raise SystemExit(f"bare loop: {slot.item.path}: {slot.error}")
        vectors.append(embedder.embed(embedder.pixel_values([slot.value for slot in batch])))
    sync()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plates", type=Path, default=None, help="folder of real plates (default: synthetic)")
    parser.add_argument("--replicate", action="store_true", help="repeat --plates files (made distinct) up to the largest size")
    parser.add_argument("--sizes", default="100,200", help="two plate counts, e.g. 100,400")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="clip-b32")
    parser.add_argument("--size", default="2000x2429", help="synthetic plate size WxH")
    parser.add_argument("--decoder", choices=("pil", "torchvision"), default="pil")
    parser.add_argument("--instance", choices=INSTANCE_KINDS, default="sqlite")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size with PIL")
    parser.add_argument("--workdir", default=None, help="reuse plates/checkpoints between runs")
    parser.add_argument("--out", default="bench/results/embed_throughput.json")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if len(sizes) != 2 or sizes[0] < 1:
        parser.error("--sizes takes two different positive plate counts, e.g. 100,400")

    from awb_dagster.assets.plates import scan_plates, sync_partitions
    from awb_dagster.constants import PLATES_PARTITIONS_NAME
    from awb_dagster.definitions import build_definitions
    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.instruments.embedding import ImageEmbedder
    from awb_dagster.paths import HomePaths
    from awb_dagster.registry.hub_settings import set_hub_endpoint
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin
    from awb_dagster.resources import AwbHome
    from awb_dagster.runner import materialize_family

    model_id, family = ARCHS[args.arch]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="awb-bench-"))
    started = time.perf_counter()
    if args.plates:
        plate_files, distinct = real_plates(args.plates, workdir / f"plates-{args.plates.name}", sizes[1], args.replicate)
        source = f"{args.plates} ({distinct} distinct files" + (", replicated with comments)" if len(plate_files) > distinct else ")")
    else:
        width, height = map(int, args.size.split("x"))
        plate_files = synthetic_plates(workdir / f"plates-{args.size}", sizes[1], (width, height))
        source = f"synthetic {args.size} JPEGs"
    print(f"{len(plate_files)} plates from {source} in {time.perf_counter() - started:.1f}s ({workdir})")

    hub = LoopbackHub(workdir / "hub")
    if model_id not in hub.repo_ids():
        hub.add_commit(model_id, arch_repo(args.arch), license="other", library_name="transformers")
    home = HomePaths(workdir / f"home-{args.arch}-{args.instance}-{int(time.time())}")
    figures: dict[int, dict] = {}
    with hub:
        endpoint = hub.start()
        set_hub_endpoint(endpoint)
        entry = Registry.load(lock_path=home.lock).get(model_id)
        pin = capture_pin(entry.instrument, endpoint=endpoint)
        lock = PinLock.load(home.lock)
        lock.add(pin)
        lock.save(home.lock)
        resource = AwbHome(home=str(home.root))
        started = time.perf_counter()
        catalog, scanned = scan_plates(resource, [plate_files[0].parent])
        if scanned.rejected:
            raise SystemExit(f"rejected plates: {scanned.rejected}")
        print(f"catalog scan {time.perf_counter() - started:.1f}s")
        instance = open_bench_instance(home, args.instance)
        try:
            sync_partitions(instance, resource)
            # Partition order, so the first N plates are one contiguous range (one run).
            plates = [catalog.plates[key] for key in instance.get_dynamic_partitions(PLATES_PARTITIONS_NAME)]
            started = time.perf_counter()
            embedder = ImageEmbedder(
                entry.instrument, pin, device=args.device, dtype=args.dtype, cache_dir=home.hf_cache,
                jpeg_draft=not args.no_draft, decoder=args.decoder,
            )  # fmt: skip
            load_s = time.perf_counter() - started
            on_cuda = embedder.device.type == "cuda"

            def sync() -> None:
                if on_cuda:
                    torch.cuda.synchronize()

            loop = dict(batch_size=args.batch_size, workers=args.workers, max_pixels=resource.max_pixels, sync=sync)
            bare_loop(embedder, plates[: args.batch_size], **loop)  # warm-up
            defs = build_definitions(
                home=str(home.root), endpoint=endpoint, offline=False, device=args.device, dtype=args.dtype,
                batch_size=args.batch_size, decode_workers=args.workers, jpeg_draft=not args.no_draft,
                decoder=args.decoder, license_opt_in=[model_id],
            )  # fmt: skip
            log_level = os.environ.get("AWB_BENCH_LOG", "WARNING")
            warm = [p.plate_id for p in plates[: min(8, sizes[0])]]
            materialize_family(defs, instance, family, pin.key, warm, force=True, log_level=log_level)  # warm-up
            for n in sizes:
                bare_s = bare_loop(embedder, plates[:n], **loop)
                started = time.perf_counter()
                runs = materialize_family(defs, instance, family, pin.key, [p.plate_id for p in plates[:n]], force=True, log_level=log_level)
                pipeline_s = time.perf_counter() - started
                if len(runs) != 1 or not runs[0].success:
                    print(f"pipeline failed at {n} plates: {runs}", file=sys.stderr)
                    return 1
                # The engine seals a pin's plates in chunks: one Dagster run, several sealed runs.
                manifests = [m for m in resource.store().manifests() if m.payload["dagster_run_id"] == runs[0].dagster_run_id]
                stream_s = round(sum(m.payload["timing"]["stream_seconds"] for m in manifests), 3)
                tags = Counter(pair["preprocess_tag"].split(";", 1)[0] for m in manifests for pair in m.pairs)
                figures[n] = {
                    "plates": n, "pipeline_s": round(pipeline_s, 3), "stream_s": stream_s, "bare_s": round(bare_s, 3),
                    "pipeline_plates_per_s": round(n / pipeline_s, 2), "stream_plates_per_s": round(n / stream_s, 2),
                    "bare_plates_per_s": round(n / bare_s, 2), "stream_over_bare": round(bare_s / stream_s, 3),
                    "event_log": event_log_timing(instance, runs[0].dagster_run_id, stream_s),
                    "preprocess_tags": dict(tags),
                }  # fmt: skip
        finally:
            instance.dispose()

    small, large = (figures[n] for n in sizes)
    delta = sizes[1] - sizes[0]

    def marginal_ms(key: str) -> float:
        return round(1000 * (large[key] - small[key]) / delta, 3)

    marginal = {name: marginal_ms(f"{name}_s") for name in ("pipeline", "stream", "bare")}
    dagster_ms = round(1000 * (large["event_log"]["outside_stream_s"] - small["event_log"]["outside_stream_s"]) / delta, 3)
    result = {
        "arch": args.arch, "model_id": model_id, "plates_source": source, "sizes": sizes,
        "decoder": args.decoder, "decoder_tag_of_jpegs": embedder.tag_for("JPEG", "RGB").split(";", 1)[0],
        "instance": args.instance, "device": args.device, "dtype": str(embedder.dtype).removeprefix("torch."),
        "batch_size": args.batch_size, "decode_workers": args.workers,
        "jpeg_draft_min_side": embedder.preprocess_spec["draft_min_side"], "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if on_cuda else None, "model_load_s": round(load_s, 3),
        "by_size": {str(n): figures[n] for n in sizes},
        "marginal_ms_per_plate": marginal,
        "pipeline_over_bare_marginal": round(marginal["pipeline"] / marginal["bare"], 3),
        "stream_over_bare_marginal": round(marginal["stream"] / marginal["bare"], 3),
        "dagster_ms_per_partition": dagster_ms,
        "definitions": {
            "marginal_ms_per_plate": "1000 * (time at the larger size - time at the smaller) / (size difference)",
            "dagster_ms_per_partition": "marginal of (event-log span of the run - stream_seconds): per-partition cost outside the plate stream",
            "event_log.span_s": "last minus first event timestamp of the Dagster run (planned events through RUN_SUCCESS)",
            "preprocess_tags": "sealed pairs of the run by decoder part of their preprocess tag",
        },
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.arch} on {args.device}, decoder {args.decoder} ({result['decoder_tag_of_jpegs']}), instance {args.instance}")
    print(f"{'plates':>7} {'pipeline s':>11} {'stream s':>9} {'bare s':>8} {'pipe/s':>8} {'stream/s':>9} {'bare/s':>8} {'outside-stream s':>17}")
    for n in sizes:
        f = figures[n]
        print(f"{n:>7} {f['pipeline_s']:>11.2f} {f['stream_s']:>9.2f} {f['bare_s']:>8.2f} {f['pipeline_plates_per_s']:>8.1f} "
              f"{f['stream_plates_per_s']:>9.1f} {f['bare_plates_per_s']:>8.1f} {f['event_log']['outside_stream_s']:>17.2f}")  # fmt: skip
    for n in sizes:
        print(f"decoders at {n}: {figures[n]['preprocess_tags']}")
    print(f"marginal ms/plate: pipeline {marginal['pipeline']:.2f}, stream {marginal['stream']:.2f}, bare {marginal['bare']:.2f}"
          f"  -> pipeline/bare {result['pipeline_over_bare_marginal']:.3f}, stream/bare {result['stream_over_bare_marginal']:.3f}")  # fmt: skip
    print(f"Dagster ms per partition (marginal, outside the stream): {dagster_ms:.2f}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
