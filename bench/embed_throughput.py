"""Throughput of the Dagster single-run backfill path against a bare loop of the same
instrument over the same decoded inputs, measured in one process run.

    python bench/embed_throughput.py                       # 200 plates, CLIP ViT-B/32 size, CPU
    python bench/embed_throughput.py --arch dinov2-b --plates 100
    python bench/embed_throughput.py --arch clip-l14 --device cuda --dtype bfloat16 --batch-size 128

The instrument is a real-size architecture with random weights (speed does not depend on
weight values), published on a loopback hub under its registry id and pinned like any other
model. Synthetic plates are JPEGs sized like the Audubon scans (2000x2429 by default).

Figures:
  pipeline   awb's path: `materialize_family` -> one Dagster run over N plate partitions:
             read + sha256 + decode in worker threads, processor, model, Parquet, manifest,
             per-partition metadata. Wall time of the whole run, model load included.
  bare       a plain loop over the already decoded images: processor + model per batch.
  stream     the part of the pipeline run inside the asset that streams plates: read,
             hash, decode (overlapped), processor, model, Parquet (from the run manifest).
  encoder    the model alone over already preprocessed tensors.
Ratios pipeline/bare and pipeline/encoder are printed and written to JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCHS = {
    # name: (registry id, family, builder)
    "clip-b32": ("openai/clip-vit-base-patch32", "clip"),
    "clip-l14": ("openai/clip-vit-large-patch14", "clip"),
    "dinov2-b": ("facebook/dinov2-base", "dinov2"),
    "dinov2-l": ("facebook/dinov2-large", "dinov2"),
}


def real_size_repo(arch: str) -> dict[str, bytes]:
    """Files of a real-size vision architecture (random weights, tiny text tower)."""
    import transformers as tf

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
        if arch == "dinov2-b":
            config = tf.Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518, patch_size=14)
        else:
            config = tf.Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518, patch_size=14)
        model = tf.Dinov2Model(config)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plates", type=int, default=200)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="clip-b32")
    parser.add_argument("--size", default="2000x2429", help="synthetic plate size WxH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    parser.add_argument("--workdir", default=None, help="reuse plates/checkpoints between runs")
    parser.add_argument("--out", default="bench/results/embed_throughput.json")
    args = parser.parse_args()

    from awb_dagster.assets.plates import scan_plates, sync_partitions
    from awb_dagster.definitions import build_definitions
    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.instance import open_instance
    from awb_dagster.instruments.embedding import ImageEmbedder
    from awb_dagster.paths import HomePaths
    from awb_dagster.plates.imaging import load_rgb
    from awb_dagster.registry.hub_settings import set_hub_endpoint
    from awb_dagster.registry.lock import PinLock
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin
    from awb_dagster.resources import AwbHome
    from awb_dagster.runner import materialize_family

    model_id, family = ARCHS[args.arch]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="awb-bench-"))
    width, height = map(int, args.size.split("x"))
    started = time.perf_counter()
    plate_files = synthetic_plates(workdir / f"plates-{args.size}", args.plates, (width, height))
    print(f"{len(plate_files)} synthetic {args.size} plates in {time.perf_counter() - started:.1f}s ({workdir})")

    hub = LoopbackHub(workdir / "hub")
    if model_id not in hub.repo_ids():
        hub.add_commit(model_id, real_size_repo(args.arch), license="other", library_name="transformers")
    home = HomePaths(workdir / f"home-{args.arch}-{args.plates}-{int(time.time())}")
    with hub:
        endpoint = hub.start()
        set_hub_endpoint(endpoint)
        entry = Registry.load(lock_path=home.lock).get(model_id)
        pin = capture_pin(entry.instrument, endpoint=endpoint)
        lock = PinLock.load(home.lock)
        lock.add(pin)
        lock.save(home.lock)
        resource = AwbHome(home=str(home.root))
        catalog, _ = scan_plates(resource, [plate_files[0].parent])
        instance = open_instance(home)
        sync_partitions(instance, resource)

        started = time.perf_counter()
        embedder = ImageEmbedder(
            entry.instrument, pin, device=args.device, dtype=args.dtype,
            cache_dir=home.hf_cache, jpeg_draft=not args.no_draft,
        )  # fmt: skip
        load_s = time.perf_counter() - started
        plates = list(catalog.plates.values())
        draft = embedder.preprocess_spec["draft_min_side"]

        on_cuda = embedder.device.type == "cuda"

        def sync() -> None:
            if on_cuda:
                torch.cuda.synchronize()

        # Decoded inputs for the bare loop: the same files, the same decode policy.
        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            images = list(pool.map(lambda p: load_rgb(p.path, max_pixels=10**9, draft_min_side=draft), plates))
        decode_s = time.perf_counter() - started
        bs = args.batch_size
        embedder.embed(embedder.pixel_values([embedder.prepare(im) for im in images[:bs]]))  # warm-up
        sync()

        started = time.perf_counter()
        for i in range(0, len(images), bs):
            embedder.embed(embedder.pixel_values([embedder.prepare(im) for im in images[i : i + bs]]))
        sync()
        bare_s = time.perf_counter() - started

        tensors = [
            embedder.pixel_values([embedder.prepare(im) for im in images[i : i + bs]])
            for i in range(0, len(images), bs)
        ]
        del images
        started = time.perf_counter()
        for batch in tensors:
            embedder.embed(batch)
        sync()
        encoder_s = time.perf_counter() - started
        del tensors, embedder

        defs = build_definitions(
            home=str(home.root), endpoint=endpoint, offline=False, device=args.device,
            dtype=args.dtype, batch_size=bs, decode_workers=args.workers,
            jpeg_draft=not args.no_draft, license_opt_in=[model_id],
        )  # fmt: skip
        started = time.perf_counter()
        runs = materialize_family(defs, instance, family, pin.key, force=True, log_level=os.environ.get("AWB_BENCH_LOG", "WARNING"))
        pipeline_s = time.perf_counter() - started
        if len(runs) != 1 or not runs[0].success:
            print(f"pipeline failed: {runs}", file=sys.stderr)
            return 1

    n = len(plates)
    (manifest,) = [m for m in resource.store().manifests() if m.payload["dagster_run_id"] == runs[0].dagster_run_id]
    stream_s = manifest.payload["timing"]["stream_seconds"]
    result = {
        "arch": args.arch,
        "model_id": model_id,
        "plates": n,
        "plate_size": args.size,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": bs,
        "decode_workers": args.workers,
        "jpeg_draft_min_side": draft,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else None,
        "model_load_s": round(load_s, 3),
        "decode_all_s": round(decode_s, 3),
        "pipeline_s": round(pipeline_s, 3),
        "bare_s": round(bare_s, 3),
        "encoder_s": round(encoder_s, 3),
        "pipeline_plates_per_s": round(n / pipeline_s, 2),
        "bare_plates_per_s": round(n / bare_s, 2),
        "encoder_plates_per_s": round(n / encoder_s, 2),
        "stream_s": stream_s,
        "stream_plates_per_s": round(n / stream_s, 2),
        "stream_over_bare": round(bare_s / stream_s, 3),
        "stream_over_encoder": round(encoder_s / stream_s, 3),
        "dagster_bookkeeping_s": round(pipeline_s - stream_s, 3),
        "pipeline_over_bare": round(bare_s / pipeline_s, 3),
        "pipeline_over_encoder": round(encoder_s / pipeline_s, 3),
        "dagster_runs": len(runs),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'path':<10} {'seconds':>9} {'plates/s':>9}")
    for name in ("pipeline", "stream", "bare", "encoder"):
        print(f"{name:<10} {result[name + '_s']:>9.2f} {result[name + '_plates_per_s']:>9.2f}")
    print(f"\npipeline/bare    = {result['pipeline_over_bare']:.3f}   stream/bare    = {result['stream_over_bare']:.3f}")
    print(f"pipeline/encoder = {result['pipeline_over_encoder']:.3f}   stream/encoder = {result['stream_over_encoder']:.3f}")
    print(f"Dagster run bookkeeping outside the stream: {result['dagster_bookkeeping_s']:.2f}s for {n} partitions")
    print(f"model load {load_s:.2f}s (cached), decode of all plates {decode_s:.2f}s; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
