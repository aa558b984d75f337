"""The OCR part of `awb demo`: the real Tesseract engine installed here (not a tiny checkpoint),
pinned by version and traineddata sha256, run as ``ocr_text`` over the demo's plates; one plate's
parsed label is printed. Where tesseract is not installed the part is skipped with one line."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.tesseract_install import TesseractMissingError, capture_tesseract_pin

TESSERACT = "tesseract"


def pin_installed_tesseract(registry: Registry, lock: PinLock, say: Callable[[str], None]) -> str | None:
    """Pin the installed engine into ``lock`` (the caller saves it); None, said in one line, when
    there is none."""
    try:
        pin = capture_tesseract_pin(registry.get(TESSERACT).instrument)
    except TesseractMissingError as exc:
        say(f"skipping OCR: {exc}")
        return None
    lock.add(pin)
    say(f"pinned {TESSERACT} -> {pin.key} (installed engine {pin.config['version']}, eng.traineddata sha256 "
        f"{pin.config['traineddata.eng'][:12]}; license `varies`: the demo opts in)")  # fmt: skip
    return pin.key


def ocr_summary(defs, instance, pin_key: str, plate_ids: Sequence[str], say: Callable[[str], None]) -> bool:
    """Materialize ``ocr_text`` for the pinned engine; print the parsed label of one plate."""
    import dagster as dg

    from awb_dagster.assets.factory import job_name
    from awb_dagster.producers.ocr import OCR_ASSET
    from awb_dagster.runner import materialize_pin_ranges

    runs = materialize_pin_ranges(defs, instance, job_name(OCR_ASSET), OCR_ASSET, {}, pin_key, plate_ids)
    if not all(run.success for run in runs):
        say(f"FAILED: {OCR_ASSET} {pin_key}; see the Dagster run {runs[-1].dagster_run_id}")
        return False
    latest: dict[str, dict] = {}
    for record in instance.fetch_materializations(dg.AssetKey(OCR_ASSET), limit=1000).records:
        materialization = record.asset_materialization  # newest first
        latest.setdefault(materialization.partition, materialization.metadata)
    read = {key: m for key, m in latest.items() if m["pin"].value == pin_key}
    say(f"\nOCR {pin_key}: {len(read)} plates read (weak labels; plate identity is never overwritten)")
    best = max(read.values(), key=lambda m: sum(bool(m[f].value) for f in ("plate_number", "latin_name", "common_name")), default=None)
    if best is not None:
        label = {name: field and {"value": field["value"], "confidence": field["confidence"]}
                 for name, field in best["label"].value.items()}  # fmt: skip
        say(f"  {best['plate_id'].value}: {json.dumps(label)} ({best['words'].value} words)")
    return True
