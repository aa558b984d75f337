"""Weights published as a plain file (``source = "url"``, e.g. the original segment-anything
checkpoints), pinned by the file's sha256.

:func:`capture_url_pin` pins such an instrument by its roster ``file_sha256``; :func:`fetch_weight_file`
downloads the file (or finds it under :func:`weight_files_dir`) and refuses it unless its sha256 is
the declared one.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import httpx

from awb_dagster.hashing import sha256_file
from awb_dagster.paths import HomePaths, resolve_home
from awb_dagster.registry.hub_client import NotPinnableError, PinError
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

URL_SOURCE = "url"
# A base URL serving url-source weight files under their own file names (a mirror; the loopback
# hub in tests) instead of the roster's url.
WEIGHTS_MIRROR_ENV = "AWB_WEIGHTS_MIRROR"
_DOWNLOAD_CHUNK = 1 << 20


class WeightFileError(PinError):
    """A url-source weight file can neither be found locally nor downloaded."""


class WeightShaMismatchError(WeightFileError):
    """A weight file's sha256 is not the declared (or pinned) one."""


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
