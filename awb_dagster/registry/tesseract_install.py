"""The installed Tesseract engine as a pin: its version, its language packs and the sha256 of
each ``.traineddata`` file (seed section 10.1: "pinned by tesseract version plus sha256 of the
traineddata file").

The pin's sha is the sha256 of that identity written as canonical JSON, so another engine
version or another language pack is another pin, never a silent change under an old one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from awb_dagster.hashing import sha256_file
from awb_dagster.registry.hub_client import PinError
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

TESSERACT_SOURCE = "tesseract"
TESSERACT_BINARY = "tesseract"
_VERSION_RE = re.compile(r"^tesseract\s+v?(\S+)", re.MULTILINE)
_TESSDATA_RE = re.compile(r'List of available languages in "([^"]+)"')


class TesseractMissingError(PinError):
    """No usable tesseract binary or language pack is installed."""


@dataclass(frozen=True)
class TesseractInstall:
    """One installed engine: binary, version, tessdata folder and language pack checksums."""

    binary: str
    version: str
    tessdata: str
    languages: dict[str, str]  # language -> sha256 of <tessdata>/<language>.traineddata

    def identity(self) -> dict[str, object]:
        """What the pin's sha covers (not the binary's path: a move is not a new engine)."""
        return {"engine": "tesseract", "version": self.version, "languages": dict(sorted(self.languages.items()))}

    @property
    def sha256(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_tesseract(languages: tuple[str, ...] = ("eng",), binary: str = TESSERACT_BINARY) -> TesseractInstall:
    """The installed engine with ``languages``; raises :class:`TesseractMissingError` saying
    how to install what is missing."""
    path = shutil.which(binary)
    if path is None:
        raise TesseractMissingError(
            f"no {binary!r} on PATH: install it (Debian/Ubuntu: apt-get install -y tesseract-ocr tesseract-ocr-eng)"
        )
    version_text = _run(path, "--version")
    version = _VERSION_RE.search(version_text)
    if version is None:
        raise TesseractMissingError(f"{path} --version printed no 'tesseract X.Y.Z' line: {version_text[:200]!r}")
    listing = _run(path, "--list-langs")
    tessdata = _TESSDATA_RE.search(listing)
    if tessdata is None:
        raise TesseractMissingError(f"{path} --list-langs names no tessdata folder: {listing[:200]!r}")
    folder = Path(tessdata.group(1))
    shas: dict[str, str] = {}
    for language in languages:
        pack = folder / f"{language}.traineddata"
        if not pack.is_file():
            raise TesseractMissingError(
                f"{pack} is missing: install the {language!r} language pack (apt-get install -y tesseract-ocr-{language})"
            )
        shas[language] = sha256_file(pack)
    return TesseractInstall(binary=path, version=version.group(1), tessdata=str(folder), languages=shas)


def capture_tesseract_pin(instrument: Instrument) -> Pin:
    """Pin ``instrument`` (``source = "tesseract"``) to the engine installed here."""
    install = find_tesseract(pinned_languages(instrument))
    return Pin(
        model_id=instrument.id,
        sha=install.sha256,
        revision_requested=f"tesseract {install.version}",
        pipeline_tag=None,
        library_name="tesseract",
        license=instrument.license or "unknown",  # no hub to ask: the declared license, never assumed
        gated=False,
        config={"version": install.version, **{f"traineddata.{k}": v for k, v in sorted(install.languages.items())}},
        output_dim=None,
        input_size=None,
        pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint=f"file://{install.tessdata}",
        instrument_key=instrument.key,
    )


def pinned_languages(instrument: Instrument) -> tuple[str, ...]:
    """The language packs an instrument declares: its ``weight_id`` (``eng.traineddata``,
    ``eng+lat.traineddata``)."""
    return tuple(str(instrument.weight_id or "eng.traineddata").removesuffix(".traineddata").split("+"))


def _run(binary: str, flag: str) -> str:
    done = subprocess.run([binary, flag], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TesseractMissingError(f"{binary} {flag} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout + done.stderr  # older engines print the version on stderr
