"""Plate files: which files under a folder are candidates, and what one file holds.

A scan lists the non-hidden image-suffixed files of its folders (:func:`list_image_files`) and
examines each (:func:`examine_file`): a file is hashed and its header read only when its size or
mtime differ from what the last scan recorded; every failure is a :class:`Rejection` with a reason.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from awb_dagster.hashing import sha256_stream
from awb_dagster.plates.thumbnails import keep_thumbnail, thumbnail_path, thumbnail_png
from awb_dagster.plates.imaging import (
    PlateError,
    exif_orientation,
    format_pixel_limit_reason,
    open_checked,
    oriented_size,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"})
# What a plate records of the image in its file (fields of both AcceptedFile and the catalog's Plate).
IMAGE_FACTS = ("width", "height", "format", "mode", "exif_rotated")


@dataclass(frozen=True)
class Rejection:
    """A file with an image suffix that was not accepted, and why."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rejection:
        """Inverse of :meth:`to_json`."""
        return cls(path=data["path"], reason=data["reason"])


@dataclass(frozen=True)
class FileStamp:
    """What a scan learned about one file; size and mtime decide whether to re-read it."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class AcceptedFile:
    """A file accepted as a plate image: its stamp and the image facts the catalog records."""

    path: str
    stamp: FileStamp
    width: int
    height: int
    format: str
    mode: str
    exif_rotated: bool

    def image_facts(self) -> dict[str, Any]:
        """The :data:`IMAGE_FACTS` of this file, by name."""
        return {name: getattr(self, name) for name in IMAGE_FACTS}


def list_image_files(roots: list[Path], recursive: bool) -> tuple[list[str], list[Rejection]]:
    """Sorted absolute paths of non-hidden image-suffixed files, plus unreadable folders."""
    found: set[str] = set()
    unreadable: list[Rejection] = []

    def record_error(exc: OSError) -> None:
        unreadable.append(Rejection(str(exc.filename), f"unreadable folder: {exc.strerror or exc}"))

    for root in roots:
        for folder, subfolders, names in os.walk(root, onerror=record_error):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            if not recursive:
                subfolders.clear()
            found.update(
                os.path.join(folder, name)
                for name in names
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            )
    return sorted(found), sorted(unreadable, key=lambda r: r.path)


def examine_file(
    path: str, last_scan: AcceptedFile | None, max_pixels: int, thumbnails_for: Path | None = None
) -> AcceptedFile:
    """Accept one file, or raise :class:`PlateError` saying why not.

    ``last_scan`` is what an earlier scan accepted at ``path`` (None if nothing): when the file's
    size and mtime still match its stamp, it is taken as is, without reading the file again.
    With ``thumbnails_for`` (the catalog's path), the decoded image also leaves its thumbnail there.
    """
    try:
        status = os.stat(path)
    except OSError as exc:
        raise PlateError(path, f"unreadable: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise PlateError(path, "not a regular file")
    if status.st_size == 0:
        raise PlateError(path, "zero bytes")
    if last_scan is not None and (last_scan.stamp.size, last_scan.stamp.mtime_ns) == (
        status.st_size,
        status.st_mtime_ns,
    ):
        if last_scan.width * last_scan.height > max_pixels:
            raise PlateError(path, format_pixel_limit_reason(last_scan.width, last_scan.height, max_pixels))
        return last_scan
    try:
        with open(path, "rb") as stream:
            sha256 = sha256_stream(stream)
            stream.seek(0)
            with open_checked(path, stream, max_pixels=max_pixels) as image:
                width, height = oriented_size(image)
                if thumbnails_for is not None and not thumbnail_path(thumbnails_for, sha256).is_file():
                    keep_thumbnail(thumbnail_path(thumbnails_for, sha256), thumbnail_png(image))
                return AcceptedFile(
                    path=path,
                    stamp=FileStamp(status.st_size, status.st_mtime_ns, sha256),
                    width=width,
                    height=height,
                    format=str(image.format),
                    mode=image.mode,
                    exif_rotated=exif_orientation(image) != 1,
                )
    except OSError as exc:
        raise PlateError(path, f"unreadable: {exc.strerror or exc}") from exc
