"""Pin capture through ``huggingface_hub`` (seed section 2).

``capture_pin`` asks the hub for a model's metadata (``HfApi.model_info``: ``modelId``,
``pipeline_tag``, ``library_name``, license, head ``sha``, gating), downloads the config at that
exact sha (``config.json``, or ``open_clip_config.json`` for open_clip repos) and reads the fields
that fix output dim and input size. A config whose output dim disagrees with the roster's
``expected_dim`` is refused. Every hub failure becomes a :class:`PinError` that names the model and
what to do (:mod:`awb_dagster.registry.hub_client`). A ``source = "url"`` instrument is pinned by
its weight file's sha256 instead (:mod:`awb_dagster.registry.weight_files`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huggingface_hub import constants

from awb_dagster.registry.hub_client import (
    COMMIT_SHA,
    DEFAULT_REVISION,
    NotPinnableError,
    PinError,
    check_endpoint,
    declared_license,
    hub_errors,
    model_info,
    one_line,
    require_sha,
)
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.pin_files import fetch_pin_files, pinned_siblings
from awb_dagster.registry.roster import Instrument
from awb_dagster.registry.tesseract_install import TESSERACT_SOURCE, capture_tesseract_pin
from awb_dagster.registry.weight_files import URL_SOURCE, capture_url_pin

HUB_SOURCES = frozenset({"hf", "demo"})
CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
# Where open_clip_config.json keeps the embedding dim and the input size.
OPEN_CLIP_DIM_FIELD = "model_cfg.embed_dim"
OPEN_CLIP_SIZE_FIELD = "model_cfg.vision_cfg.image_size"


class DimMismatchError(PinError):
    """The config's output dim differs from the roster's declared ``expected_dim``."""


def capture_pin(
    instrument: Instrument,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
) -> Pin:
    """Capture a pin of ``instrument`` at ``revision`` (default: the head of ``main``).

    Raises a :class:`PinError` subclass when the model, revision or hub is unavailable, when
    the model is gated without access, or when the config's output dim is not the declared one.
    A ``source = "url"`` instrument is pinned by its weight file instead (:func:`capture_url_pin`).
    """
    if instrument.source == URL_SOURCE:
        if revision is not None:
            raise PinError(
                f"{instrument.id}: a weight file has no revisions (its pin is the file's sha256); "
                "omit --revision, or declare the other file's url and file_sha256 in roster.toml"
            )
        return capture_url_pin(instrument, weights_dir=weights_dir)
    if instrument.source == TESSERACT_SOURCE:
        if revision is not None:
            raise PinError(f"{instrument.id}: the installed engine has no revisions; omit --revision")
        return capture_tesseract_pin(instrument)  # the engine and language packs installed here
    if instrument.source not in HUB_SOURCES:
        raise NotPinnableError(
            f"{instrument.id} ({instrument.key}) comes from {instrument.source}, not the Hugging Face hub: its"
            " pin is the library version + weight id + sha256 of the weight file (seed section 11), which is"
            " not captured through the hub. Record it in the lock by hand."
        )
    hub = check_endpoint(instrument.id, endpoint or constants.ENDPOINT)
    requested = revision or DEFAULT_REVISION
    with hub_errors(instrument.id, hub, requested, token):
        info = model_info(instrument.id, hub, token, revision, files_metadata=True)
        sha = require_sha(info, instrument.id, hub)
        if revision is not None and COMMIT_SHA.fullmatch(revision) and sha != revision:
            raise PinError(
                f"{instrument.id}: asked {hub} for commit {revision}, it answered commit {sha}; refusing to"
                " pin. Check the endpoint (a proxy or mirror rewriting answers?) and retry."
            )
        captured: dict[str, Any] = {}

        def check_config(folder: Path) -> None:  # before the files enter the cache
            captured.update(_captured_config(instrument, sha, folder))

        files = fetch_pin_files(
            instrument.id, sha, pinned_siblings(info), hub=hub, token=token, cache_dir=cache_dir, accept=check_config
        )
    dim_field, size_field = captured.pop("dim_field"), captured.pop("size_field")
    return Pin(
        model_id=info.id,
        sha=sha,
        revision_requested=requested,
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        license=declared_license(info),
        gated=bool(info.gated),
        config=captured,
        output_dim=captured.get(dim_field) if dim_field else None,
        input_size=captured.get(size_field) if size_field else None,
        pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint=hub,
        instrument_key=instrument.key,
        files=files,
    )


def _captured_config(instrument: Instrument, sha: str, folder: Path) -> dict[str, Any]:
    """The config fields fixing output dim and input size, read from the fetched files in
    ``folder`` (plus ``dim_field``/``size_field``: their dotted names); a dim that contradicts the
    roster's ``expected_dim`` is refused (:class:`DimMismatchError`)."""
    config_file, config = _read_config(instrument.id, sha, folder)
    dim_field, size_field = _config_fields(instrument, config_file)
    captured = {
        field: _lookup(config, field, instrument.id, sha, config_file)
        for field in (dim_field, size_field)
        if field is not None
    }
    output_dim = captured.get(dim_field) if dim_field else None
    declared = instrument.expected_dim
    if output_dim is not None and declared is not None and output_dim != declared:
        raise DimMismatchError(
            f"{instrument.id}@{sha[:10]}: {config_file} field '{dim_field}' is {output_dim}, but roster.toml"
            f" declares expected_dim = {declared} for {instrument.key}. Refusing to pin; fix"
            " expected_dim (or dim_config_field) in roster.toml, or pin a revision whose config matches."
        )
    return {**captured, "dim_field": dim_field, "size_field": size_field}


def _read_config(model_id: str, sha: str, folder: Path) -> tuple[str | None, dict[str, Any]]:
    """(file name, parsed JSON) of the first config among the fetched files in ``folder``, or (None, {})."""
    for filename in (CONFIG_FILE, OPEN_CLIP_CONFIG_FILE):
        path = folder / filename
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PinError(
                f"{model_id}@{sha[:10]}: {filename} is not valid JSON ({one_line(error)}); the repo is broken at"
                " this revision: pin another one (--revision), or report it to the model's authors."
            ) from error
        if not isinstance(config, dict):
            raise PinError(f"{model_id}@{sha[:10]}: {filename} is not a JSON object; pin another revision.")
        return filename, config
    return None, {}


def _config_fields(instrument: Instrument, config_file: str | None) -> tuple[str | None, str | None]:
    """The dotted config fields holding output dim and input size, for the config file found."""
    if config_file == OPEN_CLIP_CONFIG_FILE:
        return (
            instrument.dim_config_field or (OPEN_CLIP_DIM_FIELD if instrument.expected_dim else None),
            instrument.size_config_field or (OPEN_CLIP_SIZE_FIELD if instrument.input_size else None),
        )
    return instrument.dim_config_field, instrument.size_config_field


def _lookup(
    config: Mapping[str, Any], field: str, model_id: str, sha: str, config_file: str | None
) -> Any:
    """The value at a dotted path of ``config``; a field the config lacks is a roster error."""
    if config_file is None:
        raise PinError(
            f"{model_id}@{sha[:10]}: the repo has neither {CONFIG_FILE} nor {OPEN_CLIP_CONFIG_FILE}, so"
            f" '{field}' cannot be read; drop dim_config_field/size_config_field from roster.toml and audit"
            " the model by hand."
        )
    value: Any = config
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise PinError(
                f"{model_id}@{sha[:10]}: {config_file} has no field '{field}'; fix"
                " dim_config_field/size_config_field in roster.toml to name a field the config has."
            )
        value = value[part]
    return value
