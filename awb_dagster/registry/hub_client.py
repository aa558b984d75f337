"""Asking the Hugging Face hub about a model, through ``huggingface_hub``.

Every hub failure becomes a :class:`PinError` that names the model and what to do
(:func:`hub_errors`); these errors are the family every pin failure belongs to.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from collections.abc import Iterator
from contextlib import contextmanager

from huggingface_hub import HfApi, constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import httpx

from awb_dagster.registry.licenses import normalize_license

DEFAULT_REVISION = "main"
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
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


class NotPinnableError(PinError):
    """The instrument's weights are not hosted on the hub (torchvision, Tesseract)."""


def check_endpoint(model_id: str, endpoint: str) -> str:
    """``endpoint`` without a trailing slash, if it is an http(s) URL with a host and a valid port;
    otherwise a :class:`PinError` saying what is wrong."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as error:
        problem = str(error)
    else:
        problem = (
            "the scheme must be http or https" if parts.scheme not in ("http", "https")
            else "it names no host" if not parts.hostname
            else None
        )  # fmt: skip
    if problem is not None:
        raise PinError(
            f"{model_id}: hub endpoint {endpoint!r} is not a usable URL ({problem}); pass one like"
            " https://huggingface.co or http://127.0.0.1:PORT (--endpoint, or HF_ENDPOINT)."
        )
    return endpoint.rstrip("/")


def model_info(
    model_id: str, hub: str, token: str | None, revision: str | None, *, files_metadata: bool = False
) -> ModelInfo:
    """The hub's metadata of ``model_id`` at ``revision`` (None: the default branch), with each
    file's size and hashes when ``files_metadata``; call it inside :func:`hub_errors`."""
    return HfApi(endpoint=hub, token=token).model_info(
        model_id, revision=revision, files_metadata=files_metadata, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    )


def require_sha(info: ModelInfo, model_id: str, hub: str) -> str:
    """The full commit sha of ``info``; an answer without one is not a Hugging Face hub's."""
    if info.sha is None or not COMMIT_SHA.fullmatch(info.sha):
        raise PinError(
            f"{model_id}: {hub} answered without a commit sha ({info.sha!r}); check that it is a Hugging Face hub."
        )
    return info.sha


def declared_license(info: ModelInfo) -> str:
    """The card's ``license`` (every item of a list), else the ``license:*`` tags, else
    ``unknown`` (never assumed); normalized as the lock records it (:func:`normalize_license`)."""
    declared = info.card_data.get("license") if info.card_data is not None else None
    if declared:
        return normalize_license(declared if isinstance(declared, list) else str(declared))
    return normalize_license([t for t in info.tags or () if t.startswith("license:")])


@contextmanager
def hub_errors(model_id: str, hub: str, revision: str, token: str | None) -> Iterator[None]:
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
        raise PinError(f"{model_id}: {hub} answered HTTP {status} ({one_line(error)}); retry later.") from error
    except _UNREACHABLE as error:
        reason = "offline mode is on" if isinstance(error, hf_errors.OfflineModeIsEnabled) else one_line(error)
        raise HubUnreachableError(
            f"{model_id}: the hub at {hub} cannot be reached ({reason}). Pinning needs the hub; to run"
            " without it, keep the existing lock and set HF_HUB_OFFLINE=1 with a local cache that holds"
            " the pinned files."
        ) from error
    except (OSError, ValueError) as error:  # an answer that is not the hub's: bad JSON, missing headers
        raise PinError(
            f"{model_id}: {hub} gave an answer awb cannot use ({type(error).__name__}: {one_line(error)});"
            " check that the endpoint is a Hugging Face hub, then retry."
        ) from error


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (errors print as one line)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
