"""Pin capture through ``huggingface_hub`` (seed section 2).

``capture_pin`` asks the hub for a model's metadata (``HfApi.model_info``: ``modelId``,
``pipeline_tag``, ``library_name``, license, head ``sha``, gating), downloads the config at that
exact sha (``config.json``, or ``open_clip_config.json`` for open_clip repos) and reads the fields
that fix output dim and input size. A config whose output dim disagrees with the roster's
``expected_dim`` is refused. Every hub failure becomes a :class:`PinError` that names the model and
what to do.

Weights published as a plain file (``source = "url"``, e.g. the original segment-anything
checkpoints) are pinned by the file's sha256: :func:`fetch_weight_file` downloads the file (or
finds it under :func:`weight_files_dir`), and refuses it unless its sha256 is the declared one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import httpx

from awb_dagster.hashing import sha256_file
from awb_dagster.paths import HomePaths, resolve_home
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

HUB_SOURCES = frozenset({"hf", "demo"})
URL_SOURCE = "url"
# A base URL serving url-source weight files under their own file names (a mirror; the loopback
# hub in tests) instead of the roster's url.
WEIGHTS_MIRROR_ENV = "AWB_WEIGHTS_MIRROR"
_DOWNLOAD_CHUNK = 1 << 20
DEFAULT_REVISION = "main"
CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
# Where open_clip_config.json keeps the embedding dim and the input size.
OPEN_CLIP_DIM_FIELD = "model_cfg.embed_dim"
OPEN_CLIP_SIZE_FIELD = "model_cfg.vision_cfg.image_size"

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_UNREACHABLE = (httpx.TransportError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError)


class PinError(Exception):
    """A pin could not be captured; the message names the model and what to do."""


class ModelNotFoundError(PinError):
    """The hub has no such model id."""


class GatedModelError(PinError):
    """The model is gated and the token is missing or has no access."""


class RevisionNotFoundError(PinError):
    """The model exists but the requested revision does not."""


class HubUnreachableError(PinError):
    """The hub cannot be reached (connection refused, timeout, offline mode)."""


class DimMismatchError(PinError):
    """The config's output dim differs from the roster's declared ``expected_dim``."""


class NotPinnableError(PinError):
    """The instrument's weights are not hosted on the hub (torchvision, Tesseract)."""


class WeightFileError(PinError):
    """A url-source weight file can neither be found locally nor downloaded."""


class WeightShaMismatchError(WeightFileError):
    """A weight file's sha256 is not the declared (or pinned) one."""


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
    if instrument.source not in HUB_SOURCES:
        raise NotPinnableError(
            f"{instrument.id} ({instrument.key}) comes from {instrument.source}, not the Hugging Face hub: its"
            " pin is the library version + weight id + sha256 of the weight file (seed section 11), which is"
            " not captured through the hub. Record it in the lock by hand."
        )
    hub = (endpoint or constants.ENDPOINT).rstrip("/")
    requested = revision or DEFAULT_REVISION
    with _hub_errors(instrument.id, hub, requested, token):
        info = _model_info(instrument.id, hub, token, revision)
        sha = _require_sha(info, instrument.id, hub)
        config_file, config = _download_config(instrument.id, sha, hub, token, cache_dir)

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
    return Pin(
        model_id=info.id,
        sha=sha,
        revision_requested=requested,
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        license=declared_license(info),
        gated=bool(info.gated),
        config=captured,
        output_dim=output_dim,
        input_size=captured.get(size_field) if size_field else None,
        pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint=hub,
        instrument_key=instrument.key,
    )


def weight_files_dir(home: Path | str | None = None) -> Path:
    """Where url-source weight files are kept: ``<home>/weights`` (the given home, else
    ``$AWB_HOME``, else ``.awb``)."""
    return HomePaths(resolve_home(home)).weights


def weight_url(instrument: Instrument) -> str:
    """Where the weight file is downloaded from: the roster's ``url``, or the same file name
    under ``$AWB_WEIGHTS_MIRROR`` when that is set."""
    mirror = os.environ.get(WEIGHTS_MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{instrument.weight_file}" if mirror else str(instrument.url)


def capture_url_pin(instrument: Instrument, *, weights_dir: Path | None = None) -> Pin:
    """Pin a ``source = "url"`` instrument: its weight file, fetched and verified against the
    roster's ``file_sha256``, which becomes the pin's sha."""
    if instrument.source != URL_SOURCE or not instrument.file_sha256:
        raise NotPinnableError(f"{instrument.id} ({instrument.key}) is not a url-source weight file")
    url = weight_url(instrument)
    fetch_weight_file(instrument, instrument.file_sha256, weights_dir=weights_dir)
    return Pin(
        model_id=instrument.id,
        sha=instrument.file_sha256,
        revision_requested=str(instrument.weight_file),
        pipeline_tag=instrument.pipeline_tag,
        library_name=instrument.library,
        license=instrument.license or "unknown",  # no hub to ask: the declared license, never assumed
        gated=False,
        config={},
        output_dim=None,
        input_size=None,
        pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint=url.rsplit("/", 1)[0],
        instrument_key=instrument.key,
    )


def fetch_weight_file(
    instrument: Instrument, sha256: str, *, weights_dir: Path | None = None, offline: bool = False
) -> Path:
    """The local copy of ``instrument``'s weight file, verified to have ``sha256``.

    Kept as ``<weights_dir>/<sha256>/<file name>`` (default :func:`weight_files_dir`), so files of
    earlier pins stay. A missing file is downloaded from :func:`weight_url` unless ``offline`` (or
    ``HF_HUB_OFFLINE``); a download is kept only when its sha256 matches. The file is hashed again
    on every call: a file changed on disk is refused, naming it and both shas.
    """
    name = instrument.weight_file
    if name is None:
        raise NotPinnableError(f"{instrument.id} ({instrument.key}) declares no weight file url")
    root = Path(weights_dir) if weights_dir is not None else weight_files_dir()
    path = root / sha256 / name
    if path.is_file():
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightShaMismatchError(
                f"{path}: sha256 is {actual}, expected {sha256} for {instrument.id} ({name}). It is not the"
                " verified file (changed on disk, or copied in by hand): delete it and run again to download"
                " it afresh."
            )
        return path
    url = weight_url(instrument)
    if offline or constants.HF_HUB_OFFLINE:
        raise WeightFileError(
            f"{instrument.id}: {name} (sha256 {sha256}) is not at {path} and offline mode is on. Copy the"
            f" file from {url} there, or turn offline mode off to download it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{name}.{os.getpid()}.part")
    try:
        actual = _download(url, partial, instrument)
        if actual != sha256:
            raise WeightShaMismatchError(
                f"{url}: the downloaded {name} has sha256 {actual}, but {sha256} is expected for"
                f" {instrument.id} (file_sha256 in roster.toml, or its pin). The file was not kept. If the"
                " publisher replaced the file, review the new release and declare its sha256 in roster.toml"
                f" before pinning it; if a mirror serves it (${WEIGHTS_MIRROR_ENV}), fix the mirror's copy."
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _download(url: str, target: Path, instrument: Instrument) -> str:
    """Stream ``url`` into ``target``; return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            response.raise_for_status()
            with target.open("wb") as out:
                for chunk in response.iter_bytes(_DOWNLOAD_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.HTTPStatusError as error:
        raise WeightFileError(
            f"{instrument.id}: {url} answered HTTP {error.response.status_code}; check the url in roster.toml"
            f" (or the mirror in ${WEIGHTS_MIRROR_ENV})."
        ) from error
    except httpx.TransportError as error:
        raise WeightFileError(
            f"{instrument.id}: {url} cannot be reached ({error}). Retry when online, set ${WEIGHTS_MIRROR_ENV}"
            f" to a mirror serving {instrument.weight_file}, or copy the file into {target.parent} by hand."
        ) from error
    return digest.hexdigest()


def followed_revision(pin: Pin) -> str:
    """The branch or tag whose head a pin is compared with; a pin requested by commit sha follows ``main``."""
    requested = pin.revision_requested
    return DEFAULT_REVISION if _COMMIT_SHA.fullmatch(requested) else requested


def hub_head(pin: Pin, *, endpoint: str | None = None, token: str | None = None) -> str:
    """The commit sha the hub's :func:`followed_revision` of ``pin`` points at now."""
    hub = (endpoint or pin.endpoint).rstrip("/")
    followed = followed_revision(pin)
    with _hub_errors(pin.model_id, hub, followed, token):
        return _require_sha(_model_info(pin.model_id, hub, token, followed), pin.model_id, hub)


def head_moved(pin: Pin, *, endpoint: str | None = None, token: str | None = None) -> str | None:
    """The hub's current head sha if it differs from ``pin.sha``, else ``None``.

    The head is that of the branch or tag the pin was captured from; a pin requested by commit
    sha follows ``main``.
    """
    head = hub_head(pin, endpoint=endpoint, token=token)
    return None if head == pin.sha else head


@dataclass(frozen=True)
class PinStatus:
    """Whether the hub moved past one pin. ``head`` is None when the hub could not tell."""

    pin: Pin
    followed: str
    head: str | None
    error: str | None = None

    @property
    def moved(self) -> bool:
        return self.head is not None and self.head != self.pin.sha

    @property
    def state(self) -> str:
        if self.error is not None:
            return "error"
        return "moved" if self.moved else "up to date"

    def to_row(self) -> dict[str, str]:
        """A flat row for tables (CLI, UI metadata)."""
        return {
            "model_id": self.pin.model_id,
            "pin": self.pin.key,
            "pinned_sha": self.pin.sha,
            "followed": self.followed,
            "hub_head": self.head or "",
            "state": self.state,
            "error": self.error or "",
        }


def pin_statuses(
    pins: Iterable[Pin], *, endpoint: str | None = None, token: str | None = None
) -> list[PinStatus]:
    """Ask the hub for the head of each pin's followed revision; never changes a pin.

    Pins of non-hub weights (a 64-hex sha256 of the weight file) have no head and are skipped.
    A hub failure for one model is recorded in its status (naming the model and what to do),
    so one gated or deleted model does not hide the others.
    """
    statuses = []
    for pin in pins:
        if not _COMMIT_SHA.fullmatch(pin.sha):
            continue
        try:
            head: str | None = hub_head(pin, endpoint=endpoint, token=token)
            error = None
        except PinError as exc:
            head, error = None, str(exc)
        statuses.append(PinStatus(pin=pin, followed=followed_revision(pin), head=head, error=error))
    return statuses


def _model_info(model_id: str, hub: str, token: str | None, revision: str | None) -> ModelInfo:
    return HfApi(endpoint=hub, token=token).model_info(
        model_id, revision=revision, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    )


def _require_sha(info: ModelInfo, model_id: str, hub: str) -> str:
    if info.sha is None or not _COMMIT_SHA.fullmatch(info.sha):
        raise PinError(
            f"{model_id}: {hub} answered without a commit sha ({info.sha!r}); check that it is a Hugging Face hub."
        )
    return info.sha


def _download_config(
    model_id: str, sha: str, hub: str, token: str | None, cache_dir: Path | None
) -> tuple[str | None, dict[str, Any]]:
    """(file name, parsed JSON) of the first config the repo has at ``sha``, or (None, {})."""
    for filename in (CONFIG_FILE, OPEN_CLIP_CONFIG_FILE):
        try:
            path = hf_hub_download(
                model_id, filename, revision=sha, endpoint=hub, token=token, cache_dir=cache_dir
            )
        except hf_errors.RemoteEntryNotFoundError:
            continue
        return filename, json.loads(Path(path).read_text(encoding="utf-8"))
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


def declared_license(info: ModelInfo) -> str:
    """The card's ``license``, else a ``license:*`` tag, else ``unknown`` (never assumed)."""
    declared = info.card_data.get("license") if info.card_data is not None else None
    if isinstance(declared, list):
        declared = ",".join(str(item) for item in declared)
    if declared:
        return str(declared)
    tag = next((t for t in info.tags or () if t.startswith("license:")), None)
    return tag.removeprefix("license:") if tag else "unknown"


@contextmanager
def _hub_errors(model_id: str, hub: str, revision: str, token: str | None) -> Iterator[None]:
    """Translate ``huggingface_hub`` failures into :class:`PinError`s that say what to do."""
    try:
        yield
    except hf_errors.GatedRepoError as error:
        access = (
            "the token given has no access to it"
            if token
            else "no token was given (set HF_TOKEN or `hub.token` in the config)"
        )
        raise GatedModelError(
            f"{model_id} is gated on {hub} and {access}. Accept its license on {hub}/{model_id} with the"
            " account whose token you use, then retry."
        ) from error
    except hf_errors.RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{model_id} not found on {hub}; check the id (`awb registry show`), or if it is private, set"
            " HF_TOKEN (or `hub.token` in the config)."
        ) from error
    except hf_errors.RevisionNotFoundError as error:
        raise RevisionNotFoundError(
            f"{model_id} has no revision {revision!r} on {hub}; pass a branch, tag or full commit sha that"
            " exists (`--revision`), or omit it to pin the head of main."
        ) from error
    except hf_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise GatedModelError(
                f"{model_id}: {hub} refused access (HTTP {status}); set a token with access (HF_TOKEN or"
                f" `hub.token` in the config) and accept the license on {hub}/{model_id}."
            ) from error
        raise PinError(f"{model_id}: {hub} answered HTTP {status} ({error}); retry later.") from error
    except _UNREACHABLE as error:
        reason = "offline mode is on" if isinstance(error, hf_errors.OfflineModeIsEnabled) else str(error)
        raise HubUnreachableError(
            f"{model_id}: the hub at {hub} cannot be reached ({reason}). Pinning needs the hub; to run"
            " without it, keep the existing lock and set HF_HUB_OFFLINE=1 with a local cache that holds"
            " the pinned files."
        ) from error
