"""The captioner part of `awb demo`: the tiny BLIP (random weights, the fastest captioner) pinned
from the loopback hub, ``blip_captions`` over one plate, and that plate's caption record printed
with the prompt and decoding that made it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry

DEMO_CAPTIONER = "awb-demo/tiny-blip"
CAPTION_ASSET = "blip_captions"
DEMO_CAPTION_CONFIG = {"max_new_tokens": 8}


def publish_demo_captioner(hub, say: Callable[[str], None]) -> None:
    """Commit the tiny BLIP to ``hub`` unless it is there (re-publishing would move its head)."""
    from awb_dagster.demo.tiny_captioners import publish_tiny_captioners

    if DEMO_CAPTIONER not in hub.repo_ids():
        say(f"building tiny checkpoint {DEMO_CAPTIONER} (random weights: its captions carry no meaning)")
        publish_tiny_captioners(hub, only=[DEMO_CAPTIONER])


def pin_demo_captioner(registry: Registry, lock: PinLock, endpoint: str, cache_dir: Path, say: Callable[[str], None]) -> str:
    """Pin the tiny BLIP into ``lock`` (the caller saves it); its pin key."""
    from awb_dagster.registry.pins import capture_pin

    pin = capture_pin(registry.get(DEMO_CAPTIONER).instrument, endpoint=endpoint, cache_dir=cache_dir)
    lock.add(pin)
    say(f"pinned {DEMO_CAPTIONER} -> {pin.key}")
    return pin.key


def caption_summary(defs, instance, store, pin_key: str, plate_id: str, say: Callable[[str], None]) -> bool:
    """Materialize ``blip_captions`` for one plate; print its record with prompt and decoding."""
    import time

    import pyarrow.parquet as pq

    from awb_dagster.assets.factory import job_name
    from awb_dagster.registry.prompts import PromptRegistry
    from awb_dagster.runner import materialize_pin_ranges

    started = time.perf_counter()
    runs = materialize_pin_ranges(defs, instance, job_name(CAPTION_ASSET), CAPTION_ASSET, DEMO_CAPTION_CONFIG, pin_key, [plate_id])
    if not all(run.success for run in runs):
        say(f"FAILED: {CAPTION_ASSET} {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
        return False
    pair = max(store.sealed_pairs(pin_key, {plate_id}).values(), key=lambda p: p.run_id)
    (row,) = [r for r in pq.read_table(pair.artifact_path).to_pylist() if r["record_id"] in pair.record_ids]
    template = PromptRegistry.load().get(row["prompt_id"], row["prompt_version"]).template
    seconds = time.perf_counter() - started
    say(f"\ncaption of {plate_id} by {pin_key} ({seconds:.1f} s; a weak label; random weights, so the words mean nothing):")
    say(f"  text: {row['text']!r}" + (f" (empty: {row['empty_reason']})" if row["empty_reason"] else ""))
    say(f"  prompt: {row['prompt_id']}@v{row['prompt_version']} sha256 {row['prompt_sha256'][:12]} template {template!r}")
    say(f"  decoding: {json.dumps(json.loads(row['decoding']))}; {row['token_count']} generated tokens; record {row['record_id']}")
    return True
