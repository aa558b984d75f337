"""A pin carries its files: the pinned revision's loadable files, downloaded into the home's hub
cache at the pinned sha and verified, so a run loads them with ``local_files_only`` and needs
neither network nor an endpoint.

Which files: those a load reads (configs, safetensors weights, tokenizer and processor files;
:data:`PIN_FILE_PATTERNS`), not the other weight formats a repo may also hold (``*.bin``,
``*.h5``, ``*.msgpack``, ``*.onnx``), which awb never loads; the one exception is an open_clip
repo with only ``open_clip_pytorch_model.bin``, loaded with ``torch.load(weights_only=True)``.

Verified, each file: it comes from the pinned commit (the path ``hf_hub_download`` files it under
is the ``X-Repo-Commit`` the hub answered), its size, and its hash where the hub lists one (the
LFS sha256 of weight files, the git blob id of the others). The download goes to a staging folder
inside the cache and is moved into place only when every file passed, so a failed pin leaves the
cache as it was. No Dagster here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import ModelInfo, RepoSibling

from awb_dagster.registry.hub_client import PinError

PIN_FILE_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")
# open_clip's weight files in a hub repo: the pickle is pinned only where no safetensors exists.
OPEN_CLIP_SAFETENSORS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
OPEN_CLIP_PICKLE = "open_clip_pytorch_model.bin"
STAGING_DIR = ".awb-incoming"
_CHUNK = 1 << 20


class PinFileError(PinError):
    """A downloaded file is not the one the pin names (another commit, size or hash)."""


def snapshot_dir(cache_dir: Path, model_id: str, sha: str) -> Path:
    """Where the hub cache keeps ``model_id``'s files at commit ``sha``."""
    return Path(cache_dir) / repo_folder_name(repo_id=model_id, repo_type="model") / "snapshots" / sha


def pin_files_cached(cache_dir: Path | None, model_id: str, sha: str, files: Iterable[str]) -> bool:
    """Whether every file a pin carries is in ``cache_dir`` at its sha (a pin without files: no)."""
    names = list(files)
    if cache_dir is None or not names:
        return False
    folder = snapshot_dir(cache_dir, model_id, sha)
    return all((folder / name).is_file() for name in names)


def pinned_siblings(info: ModelInfo) -> list[RepoSibling]:
    """The files of ``info`` (model info with ``files_metadata``) a load reads, by name. An open_clip
    repo whose weights exist only as ``open_clip_pytorch_model.bin`` (BiomedCLIP) carries that file:
    open_clip loads it with ``torch.load(weights_only=True)``."""
    siblings = list(info.siblings or ())
    names = {s.rfilename for s in siblings}
    extra = {OPEN_CLIP_PICKLE} if OPEN_CLIP_PICKLE in names and not names & set(OPEN_CLIP_SAFETENSORS) else set()
    return sorted(
        (s for s in siblings if s.rfilename in extra or any(fnmatch(s.rfilename, p) for p in PIN_FILE_PATTERNS)),
        key=lambda s: s.rfilename,
    )


def fetch_pin_files(
    model_id: str,
    sha: str,
    siblings: list[RepoSibling],
    *,
    hub: str,
    token: str | None,
    cache_dir: Path | None,
    accept: Callable[[Path], None],
) -> dict[str, str]:
    """Download ``siblings`` of ``model_id`` at ``sha`` into ``cache_dir`` (default: the hub
    library's cache) and verify them; return file name -> sha256. ``accept`` is called with the
    folder holding the verified files before they enter the cache: whatever it raises leaves the
    cache as it was. Call it inside :func:`awb_dagster.registry.hub_client.hub_errors`. Files
    already cached and matching are not downloaded again. On any failure the cache is left as it was."""
    cache_root = Path(cache_dir or constants.HF_HUB_CACHE)
    final = snapshot_dir(cache_root, model_id, sha)
    if all((final / s.rfilename).is_file() for s in siblings):
        checked = {s.rfilename: _check(final / s.rfilename, s) for s in siblings}
        if all(problem is None for _, problem in checked.values()):
            accept(final)
            return {name: digest for name, (digest, _) in checked.items()}
        # A cached file differs from what the hub lists: fetch them all again, below.
    created = [p for p in (cache_root / STAGING_DIR, *(cache_root / STAGING_DIR).parents) if not p.exists()]
    stage = cache_root / STAGING_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    stage.mkdir(parents=True)
    try:
        staged = snapshot_dir(stage, model_id, sha)
        hashes = {}
        for sibling in siblings:
            path = Path(
                hf_hub_download(
                    model_id,
                    sibling.rfilename,
                    revision=sha,
                    cache_dir=stage,
                    endpoint=hub,
                    token=token,
                    etag_timeout=constants.HF_HUB_ETAG_TIMEOUT,
                )
            )
            if path != staged / sibling.rfilename:
                raise PinFileError(
                    f"{model_id}@{sha[:10]}: the hub answered {sibling.rfilename} from another commit"
                    f" ({_answered_commit(path, stage)}, X-Repo-Commit) than the pinned one; refusing to pin."
                    " Check the endpoint (a proxy or mirror rewriting answers?) and retry."
                )
            hashes[sibling.rfilename] = _verified(model_id, sha, path, sibling)
        accept(staged)
        _move_into_cache(stage, cache_root, model_id, sha)
        return hashes
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # only folders this call created (the home itself too), innermost first, if empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _verified(model_id: str, sha: str, path: Path, sibling: RepoSibling) -> str:
    """The sha256 of ``path`` after checking it against what the hub lists for ``sibling``."""
    digest, problem = _check(path, sibling)
    if problem is not None:
        raise PinFileError(
            f"{model_id}@{sha[:10]}: {sibling.rfilename} was altered in transit: {problem}; refusing to pin."
            " Retry; if it persists, check the endpoint (a proxy rewriting files?)."
        )
    return digest


def _check(path: Path, sibling: RepoSibling) -> tuple[str, str | None]:
    """(sha256 of ``path``, what differs from the size and hash the hub lists, or None)."""
    digest, git_blob, size = hashlib.sha256(), hashlib.sha1(), path.stat().st_size
    git_blob.update(b"blob %d\0" % size)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            git_blob.update(chunk)
    checks = [("size", sibling.size, size)]
    if sibling.lfs is not None:
        checks.append(("sha256", sibling.lfs.sha256, digest.hexdigest()))
    elif sibling.blob_id is not None:
        checks.append(("git blob id", sibling.blob_id, git_blob.hexdigest()))
    for what, listed, got in checks:
        if listed is not None and listed != got:
            return digest.hexdigest(), f"the hub lists {what} {listed}, the file received has {got}"
    return digest.hexdigest(), None


def _answered_commit(path: Path, stage: Path) -> str:
    """The commit a staged file was filed under (``.../snapshots/<commit>/...``)."""
    parts = path.relative_to(stage).parts
    return parts[2] if len(parts) > 2 and parts[1] == "snapshots" else str(path)


def _move_into_cache(stage: Path, cache_root: Path, model_id: str, sha: str) -> None:
    """Move the staged blobs and snapshot entries into the cache (relative links stay valid:
    the layout below the repo folder is the same)."""
    repo = repo_folder_name(repo_id=model_id, repo_type="model")
    staged_repo, final_repo = stage / repo, cache_root / repo
    for blob in sorted((staged_repo / "blobs").glob("*")):
        target = final_repo / "blobs" / blob.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(blob, target)
    staged_snapshot = staged_repo / "snapshots" / sha
    for entry in sorted(staged_snapshot.rglob("*")):
        if entry.is_dir() and not entry.is_symlink():
            continue
        target = final_repo / "snapshots" / sha / entry.relative_to(staged_snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, target)

