"""The plate catalog: which image files are plates, the identity of their bytes, stable ids.

A plate is one distinct byte sequence (sha256). Its id is derived from its first file
name and never changes meaning: once an id names some bytes, a rescan keeps that id for
those bytes, and a changed file keeps its id only when nothing else still holds the old
bytes. The catalog lives in one JSON file written atomically by :meth:`PlateCatalog.save`.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from awb_dagster.atomic import write_json_atomic
from awb_dagster.locking import hold_lock
from awb_dagster.plates.files import (
    IMAGE_FACTS,
    AcceptedFile,
    FileStamp,
    Rejection,
    examine_file,
    list_image_files,
)
from awb_dagster.plates.imaging import PlateError

DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard; plates.max_pixels overrides it
SAMPLE_PLATES_DIR = Path(__file__).resolve().parent.parent / "sample_plates"
CATALOG_FORMAT = "awb-plate-catalog/1"
REJECTIONS_FILE_NAME = "rejections.json"
LOCK_FILE_NAME = "catalog.lock"  # held while a scan loads, changes and saves the catalog


class CatalogError(Exception):
    """The catalog file or a scanned folder cannot be used; the message says what to do."""


def plate_id_for(path: str | os.PathLike[str]) -> str:
    """A stable, partition-key-safe id from a file name.

    Lowercase stem, accents dropped, every run of characters outside ``[a-z0-9._-]``
    replaced by one ``-``, leading/trailing ``-._`` stripped; ``"plate"`` if nothing is left.
    """
    stem = unicodedata.normalize("NFKD", Path(path).stem.lower())
    stem = "".join(char for char in stem if not unicodedata.combining(char))
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem)
    slug = re.sub(r"-{2,}", "-", slug).strip("-._")
    return slug or "plate"


@dataclass(frozen=True)
class Plate:
    """One distinct image (by sha256) and the files that hold it.

    ``width`` and ``height`` are after the EXIF orientation is applied; ``mode`` is the
    source mode as decoded by PIL (``L``, ``RGBA``, ``CMYK``, ``I;16``...).
    ``source_paths`` are absolute and sorted; the first is the primary file.
    """

    plate_id: str
    sha256: str
    width: int
    height: int
    format: str
    mode: str
    n_bytes: int
    source_paths: tuple[str, ...]
    exif_rotated: bool

    @property
    def path(self) -> Path:
        """The primary file."""
        return Path(self.source_paths[0])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = asdict(self)
        data["source_paths"] = list(self.source_paths)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plate:
        """Inverse of :meth:`to_json`; a missing field raises KeyError."""
        values = {f.name: data[f.name] for f in fields(cls)}
        values["source_paths"] = tuple(values["source_paths"])
        return cls(**values)


@dataclass
class ScanResult:
    """What one scan changed. ``missing``: known plates none of whose files were found."""

    added: list[Plate] = field(default_factory=list)
    updated: list[Plate] = field(default_factory=list)
    unchanged: list[Plate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    missing: list[Plate] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, e.g. ``"15 plates found: 2 added, ..."``."""
        found = len(self.added) + len(self.updated) + len(self.unchanged)
        return (
            f"{found} plates found: {len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged; {len(self.rejected)} files rejected; "
            f"{len(self.missing)} known plates missing"
        )


class PlateCatalog:
    """The registered plates, persisted as JSON at ``path``.

    ``plates`` keeps insertion order (the order of dynamic partition keys); ``sources``
    lists every folder ever scanned; ``rejections`` holds the last scan's rejected files.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        plates: dict[str, Plate] | None = None,
        sources: list[str] | None = None,
        rejections: list[Rejection] | None = None,
        files: dict[str, FileStamp] | None = None,
    ) -> None:
        self.path = Path(path)
        self.plates: dict[str, Plate] = dict(plates or {})
        self.sources: list[str] = list(sources or [])
        self.rejections: list[Rejection] = list(rejections or [])
        self._files: dict[str, FileStamp] = dict(files or {})

    @property
    def rejections_path(self) -> Path:
        """``rejections.json`` beside the catalog file."""
        return self.path.with_name(REJECTIONS_FILE_NAME)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PlateCatalog:
        """Read the catalog at ``path``; a missing file is an empty catalog."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CATALOG_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {CATALOG_FORMAT!r}")
            plates = [Plate.from_json(item) for item in data["plates"]]
            files = {name: FileStamp(**stamp) for name, stamp in data["files"].items()}
            sources = [str(source) for source in data["sources"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CatalogError(
                f"plate catalog {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
                "restore it from a backup, or delete it and rescan the plate folders"
            ) from exc
        rejections_path = path.with_name(REJECTIONS_FILE_NAME)
        rejections: list[Rejection] = []
        if rejections_path.exists():
            try:
                rejections = [
                    Rejection.from_json(item)
                    for item in json.loads(rejections_path.read_text(encoding="utf-8"))
                ]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CatalogError(
                    f"rejection list {rejections_path} is unreadable or corrupt ({exc}); "
                    "delete it, it is rewritten by the next scan and save"
                ) from exc
        return cls(
            path,
            plates={plate.plate_id: plate for plate in plates},
            sources=sources,
            rejections=rejections,
            files=files,
        )

    @classmethod
    @contextmanager
    def updating(cls, path: str | os.PathLike[str]) -> Iterator[PlateCatalog]:
        """Load the catalog at ``path`` for changes and save it after the ``with`` block, holding
        its lock throughout: two processes scanning at once never lose each other's plates."""
        path = Path(path)
        with hold_lock(path.with_name(LOCK_FILE_NAME)):
            catalog = cls.load(path)
            yield catalog
            catalog.save()

    def save(self) -> None:
        """Atomically write the catalog and ``rejections.json`` (stable, sorted JSON)."""
        catalog = {
            "format": CATALOG_FORMAT,
            "sources": self.sources,
            "plates": [plate.to_json() for plate in self.plates.values()],
            "files": {name: asdict(stamp) for name, stamp in sorted(self._files.items())},
        }
        write_json_atomic(self.path, catalog)
        write_json_atomic(self.rejections_path, [r.to_json() for r in self.rejections])

    def get(self, plate_id: str) -> Plate:
        """The plate with ``plate_id``; KeyError says how to register plates."""
        try:
            return self.plates[plate_id]
        except KeyError:
            raise KeyError(
                f"no plate {plate_id!r} in catalog {self.path} ({len(self.plates)} plates); "
                "scan the folder that holds it (`awb plates add <folder>`)"
            ) from None

    def scan(
        self,
        dirs: Iterable[str | os.PathLike[str]],
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        recursive: bool = True,
    ) -> ScanResult:
        """Scan ``dirs`` for image files and update the catalog in memory (call :meth:`save`).

        Files are visited in sorted order, hidden files and folders skipped, files without
        an image suffix ignored. A file whose size and mtime match the last scan is not read
        again. Every image-suffixed file that fails is rejected with a reason; nothing is
        changed in memory unless the whole scan completes.
        """
        roots = [Path(os.path.abspath(d)) for d in dirs]
        for root in roots:
            if not root.is_dir():
                raise CatalogError(
                    f"plate folder {root} does not exist or is not a folder; "
                    "fix the path in the plate source configuration"
                )

        def in_scope(path: str) -> bool:
            parent = Path(path).parent
            return any(parent == root or (recursive and root in parent.parents) for root in roots)

        paths, rejected = list_image_files(roots, recursive)
        known_by_sha = {plate.sha256: plate for plate in self.plates.values()}
        accepted: list[AcceptedFile] = []
        for path in paths:
            try:
                accepted.append(examine_file(path, self._last_scan(path, known_by_sha), max_pixels, self.path))
            except PlateError as exc:
                rejected.append(Rejection(exc.path, exc.reason))

        groups: dict[str, list[AcceptedFile]] = {}
        for accepted_file in accepted:
            groups.setdefault(accepted_file.stamp.sha256, []).append(accepted_file)
        ids = self._assign_ids(groups, in_scope)

        rejected.sort(key=lambda rejection: rejection.path)
        result = ScanResult(rejected=rejected)
        plates = dict(self.plates)
        for sha256, group in groups.items():
            plate_id = ids[sha256]
            previous = self.plates.get(plate_id)
            kept_paths: set[str] = set()
            if previous is not None and previous.sha256 == sha256:
                kept_paths = {path for path in previous.source_paths if not in_scope(path)}
            first = group[0]
            plate = Plate(
                plate_id=plate_id,
                sha256=sha256,
                n_bytes=first.stamp.size,
                source_paths=tuple(sorted(kept_paths | {f.path for f in group})),
                **first.image_facts(),
            )
            if previous is None:
                result.added.append(plate)
            elif previous.sha256 != sha256:
                result.updated.append(plate)
            else:
                result.unchanged.append(plate)
            plates[plate_id] = plate
        found_ids = set(ids.values())
        result.missing = [
            plate
            for plate_id, plate in self.plates.items()
            if plate_id not in found_ids and any(in_scope(p) for p in plate.source_paths)
        ]

        self.plates = plates
        self._files = {path: stamp for path, stamp in self._files.items() if not in_scope(path)}
        self._files.update((f.path, f.stamp) for f in accepted)
        self.sources.extend(s for s in dict.fromkeys(map(str, roots)) if s not in self.sources)
        self.rejections = rejected
        return result

    def _last_scan(self, path: str, known_by_sha: dict[str, Plate]) -> AcceptedFile | None:
        """What the last scan accepted at ``path``, if its bytes are still a catalogued plate."""
        stamp = self._files.get(path)
        known = known_by_sha.get(stamp.sha256) if stamp is not None else None
        if stamp is None or known is None:
            return None
        return AcceptedFile(path=path, stamp=stamp, **{name: getattr(known, name) for name in IMAGE_FACTS})

    def _assign_ids(
        self, groups: dict[str, list[AcceptedFile]], in_scope: Callable[[str], bool]
    ) -> dict[str, str]:
        """Map each found sha256 to a plate id, keeping every existing id's meaning.

        1. Bytes already in the catalog keep their id.
        2. New bytes at a path whose old plate was not found elsewhere take over that id
           (the file changed: reported as updated).
        3. Other new bytes get the slug of their first path, or ``<slug>-<sha256[:8]>``
           when that id is taken (by an earlier file in sort order or by catalog history).
        """
        id_by_sha = {plate.sha256: plate.plate_id for plate in self.plates.values()}
        ids = {sha256: id_by_sha[sha256] for sha256 in groups if sha256 in id_by_sha}
        owner_by_path = {
            path: plate for plate in self.plates.values() for path in plate.source_paths
        }
        taken_by_found = set(ids.values())
        for sha256, group in groups.items():
            if sha256 in ids:
                continue
            for accepted_file in group:
                owner = owner_by_path.get(accepted_file.path)
                if (
                    owner is not None
                    and owner.plate_id not in taken_by_found
                    and all(in_scope(path) for path in owner.source_paths)
                ):
                    ids[sha256] = owner.plate_id
                    taken_by_found.add(owner.plate_id)
                    break
        taken = set(self.plates) | taken_by_found
        for sha256, group in groups.items():
            if sha256 in ids:
                continue
            base = plate_id_for(group[0].path)
            candidates = [base] + [f"{base}-{sha256[:n]}" for n in (8, 16, 64)]
            free = next((c for c in candidates if c not in taken), None)
            if free is None:
                raise CatalogError(
                    f"cannot find a free plate id for {group[0].path} (tried {candidates}); "
                    "rename the file"
                )
            ids[sha256] = free
            taken.add(free)
        return ids
