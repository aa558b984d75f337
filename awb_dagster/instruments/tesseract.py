"""Tesseract OCR of a plate's engraved caption bands (seed section 10.1). No Dagster here.

Whole-plate OCR of a 2,000-px Audubon scan reads hatching as letters and finds little of the
engraved text, so the engine runs on label zones found by declared heuristics (all in the
preprocess tag): the header band (top ``header_fraction`` of the plate: "No. 13." and
"PLATE LXI.") and the caption band (bottom ``caption_fraction``: common name, Latin binomial,
engraver's line), each greyscaled, read once per scale of ``header_scales`` / ``caption_scales``
(Lanczos upscaling) with ``--psm`` sparse-text segmentation. Second reads (also in the tag): the
header line around the most confident word PLATE with ``--psm 7`` and :data:`LINE_WHITELIST`,
plus its Roman numeral from glyph shapes and the count of its trailing I's from its strokes
(:mod:`roman_glyphs`) and by nearest template (:mod:`roman_templates`), per ``plate_line_scales``; and
the caption row of all-capital centre words with the best two-word confidence (the binomial)
with ``--psm 6``,
per ``caption_line_scales``. The tesseract binary is called directly with TSV output.

Record schema (one :class:`OcrWord` per recognised word): ``text``; ``confidence`` in [0, 1]
(Tesseract's 0-100 divided by 100); ``box`` plate pixel XYWH (zone box mapped back through the
scale); ``line_id`` ``<pass_id>:<block>.<paragraph>.<line>``; ``zone``; ``word_index``; ``pass_id``
(the read that found it: ``<zone>@<scale>``, ``header@line<scale>``, ``header@glyphs<scale>``,
``header@templates<scale>``, ``header@tail<scale>``, ``caption@line<scale>``).
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from awb_dagster.instruments.common import InstrumentError, pin_provenance, require_pin_of
from awb_dagster.instruments.local_contrast import MAX_DARK_SHARE, NORM_VERSION, is_faint, local_normalize, mostly_texture, normalized_crop
from awb_dagster.instruments.roman_glyphs import GLYPH_VERSION, read_numeral, stroke_tail
from awb_dagster.instruments.roman_templates import TEMPLATE_VERSION, read_numeral_by_template
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument
from awb_dagster.registry.tesseract_install import TesseractInstall, TesseractMissingError, find_tesseract, pinned_languages

ADAPTER_VERSION = "tesseract-zones-5"
HEADER_ZONE = "header"
CAPTION_ZONE = "caption"
CENTRE = (0.2, 0.8)  # the title lines are centred; the artist's and engraver's lines sit at the edges
LINE_WHITELIST = "PLATE.,CLXVI0123456789"  # the characters of a header line "PLATE. CCLIII."
_PLATE_WORD = re.compile(r"^P[LI1|]ATE?")
_TSV_FIELDS = 12  # level page_num block_num par_num line_num word_num left top width height conf text


@dataclass(frozen=True)
class ZoneSettings:
    """The label-zone heuristics and engine flags of a run (all in the preprocess tag)."""

    header_fraction: float = 0.12  # top band holding "No. N." and "PLATE N."
    caption_fraction: float = 0.14  # bottom band holding the common name, binomial and engraver's line
    # Each band is read once per scale (Lanczos upscaling; the header capitals are ~15 px high,
    # the caption's small capitals ~10 px): the parser votes across these passes.
    header_scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    # The header band is read once more per scale here after local contrast normalization
    # (instruments.local_contrast: faint brown headers), pass header@norm<scale>; () turns that off.
    header_norm_scales: tuple[float, ...] = (3.0,)
    caption_scales: tuple[float, ...] = (3.0, 2.0)
    # The header line around the word PLATE is read again per scale here: Tesseract --psm 7 with
    # LINE_WHITELIST, and the numeral's glyph shapes (instruments.roman_glyphs); () turns that off.
    plate_line_scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    # The row of the most confident all-capital caption word in the centre band (the engraved
    # binomial) is read again per scale here, one row height above and below, with --psm 6.
    caption_line_scales: tuple[float, ...] = (2.0, 3.0)
    psm: int = 11  # sparse text: the bands hold short runs of words far apart
    oem: int = 1  # LSTM engine only
    timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        for name in ("header_fraction", "caption_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 0.5:
                raise ValueError(f"{name} must be in (0, 0.5], got {value}")
        for name in ("header_scales", "caption_scales", "plate_line_scales", "caption_line_scales", "header_norm_scales"):
            scales = getattr(self, name)
            if (not scales and name in ("header_scales", "caption_scales")) or not all(1.0 <= scale <= 6.0 for scale in scales) or len(set(scales)) != len(scales):
                raise ValueError(f"{name} must be distinct scales in [1, 6], got {scales}")
        if self.psm not in range(14) or self.oem not in range(4):
            raise ValueError(f"psm must be 0-13 and oem 0-3, got psm={self.psm} oem={self.oem}")


@dataclass(frozen=True)
class OcrWord:
    text: str
    confidence: float  # [0, 1]
    box: tuple[int, int, int, int]  # plate pixel XYWH
    line_id: str  # <zone>@<scale>:<block>.<paragraph>.<line>
    zone: str
    word_index: int
    pass_id: str = ""  # <zone>@<scale>: which read of the zone found it


def label_zones(width: int, height: int, settings: ZoneSettings) -> dict[str, tuple[int, int, int, int]]:
    """Zone name -> plate pixel box (left, top, right, bottom)."""
    header = max(1, round(height * settings.header_fraction))
    caption = max(1, round(height * settings.caption_fraction))
    return {HEADER_ZONE: (0, 0, width, header), CAPTION_ZONE: (0, height - caption, width, height)}


def zones_tag(settings: ZoneSettings) -> str:
    return (
        f"zones(header=top{settings.header_fraction:g},caption=bottom{settings.caption_fraction:g})"
        f"|grey|scales(header={','.join(f'{s:g}' for s in settings.header_scales)},"
        f"caption={','.join(f'{s:g}' for s in settings.caption_scales)}):lanczos"
        f"|psm={settings.psm}|oem={settings.oem}"
        + (f"|header-{NORM_VERSION}(skip-dark>{MAX_DARK_SHARE:g})@{','.join(f'{s:g}' for s in settings.header_norm_scales)}:lanczos"
           if settings.header_norm_scales else "")
        + (f"|plate-line(psm=7,whitelist={LINE_WHITELIST},{GLYPH_VERSION},{TEMPLATE_VERSION})@"
           f"{','.join(f'{s:g}' for s in settings.plate_line_scales)}:lanczos" if settings.plate_line_scales else "")
        + (f"|caption-line(capital-pair-row,centre{CENTRE[0]:g}-{CENTRE[1]:g},psm=6)@"
           f"{','.join(f'{s:g}' for s in settings.caption_line_scales)}:lanczos" if settings.caption_line_scales else "")
    )  # fmt: skip


def parse_tsv(
    text: str, zone: str, origin: tuple[int, int], scale: float, first_index: int = 0, pass_id: str | None = None
) -> list[OcrWord]:
    """Tesseract's TSV (word rows: level 5) -> words with boxes in plate pixels. Rows with
    confidence -1 (layout rows) or empty text are not words. ``pass_id`` defaults to ``zone@scale``."""
    words: list[OcrWord] = []
    pass_id = pass_id or f"{zone}@{scale:g}"
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None or header[:1] != ["level"]:
        raise InstrumentError(f"tesseract TSV for zone {zone} has no header row: {text[:120]!r}")
    for row in reader:
        if len(row) != _TSV_FIELDS or row[0] != "5" or not row[11].strip() or float(row[10]) < 0:
            continue
        left, top, width, height = (int(v) for v in row[6:10])
        x0, y0 = origin
        box = (x0 + int(left / scale), y0 + int(top / scale), max(1, round(width / scale)), max(1, round(height / scale)))
        words.append(
            OcrWord(
                text=row[11].strip(),
                confidence=round(min(100.0, float(row[10])) / 100.0, 4),
                box=box,
                line_id=f"{pass_id}:{row[2]}.{row[3]}.{row[4]}",
                zone=zone,
                word_index=first_index + len(words),
                pass_id=pass_id,
            )
        )
    return words


def _pair_score(word: OcrWord, capitals: list[OcrWord]) -> float:
    """The summed confidence of the two most confident capital words on ``word``'s row that do not
    overlap horizontally (reads of one word at several scales overlap): a binomial is two words,
    and the engraver's or a legend's line rarely holds two confident capital words."""
    centre = word.box[1] + word.box[3] / 2
    row = sorted((w for w in capitals if abs(w.box[1] + w.box[3] / 2 - centre) <= max(w.box[3], word.box[3]) / 2),
                 key=lambda w: -w.confidence)  # fmt: skip
    picked: list[OcrWord] = []
    for w in row:
        if all(w.box[0] >= p.box[0] + p.box[2] or p.box[0] >= w.box[0] + w.box[2] for p in picked):
            picked.append(w)
    return sum(w.confidence for w in picked[:2])


def numeral_crop(plate: OcrWord, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) of the numeral after a PLATE word: from the end of PLATE
    (its share of a merged word such as ``PLATE,LVII``) 2.2 word widths right, half a word height
    above and below; None when under a word height wide (PLATE at the plate's right edge)."""
    x, y, w, h = plate.box
    start = x + (w if len(plate.text) <= 6 else round(w * 5.5 / len(plate.text)))
    crop = (start, max(0, y - h // 2), min(width, start + round(2.2 * w)), min(height, y + h + h // 2))
    return crop if crop[2] - crop[0] >= h else None


class TesseractReader:
    """The installed engine, checked against its pin, reading label zones of plates."""

    device = "cpu"
    dtype = "none"

    def __init__(self, instrument: Instrument, pin: Pin, settings: ZoneSettings = ZoneSettings()):
        require_pin_of(instrument, pin, InstrumentError)
        self.instrument = instrument
        self.pin = pin
        self.settings = settings
        try:
            self.install: TesseractInstall = find_tesseract(pinned_languages(instrument))
        except TesseractMissingError as exc:
            raise InstrumentError(f"{instrument.id} pin {pin.key}: {exc}") from exc
        if self.install.sha256 != pin.sha:
            raise InstrumentError(
                f"{instrument.id}: the installed engine (tesseract {self.install.version}, "
                f"{self._packs()}) is not pin {pin.key} (tesseract {pin.config.get('version')}); "
                "pin it (`awb pin tesseract`) to run with it, or reinstall the pinned version"
            )
        self.languages = "+".join(sorted(self.install.languages))

    def _packs(self) -> str:
        return ", ".join(f"{lang}.traineddata sha256 {sha[:12]}" for lang, sha in sorted(self.install.languages.items()))

    @property
    def preprocess_tag(self) -> str:
        return f"{ADAPTER_VERSION}|tesseract{self.install.version}|lang={self.languages}|{zones_tag(self.settings)}"

    def describe(self) -> dict[str, Any]:
        return {
            **pin_provenance(self.instrument, self.pin),
            "engine": {**self.install.identity(), "binary": self.install.binary, "tessdata": self.install.tessdata},
            "zones": asdict(self.settings),
            "preprocess_tag": self.preprocess_tag,
        }

    def read(self, image: Image.Image) -> list[OcrWord]:
        """Every word Tesseract finds in the plate's label zones, in zone order."""
        grey = ImageOps.grayscale(image)
        words: list[OcrWord] = []
        for zone, (left, top, right, bottom) in label_zones(grey.width, grey.height, self.settings).items():
            band = grey.crop((left, top, right, bottom))
            scales = self.settings.header_scales if zone == HEADER_ZONE else self.settings.caption_scales
            for scale in scales:
                size = (max(1, round(band.width * scale)), max(1, round(band.height * scale)))
                tsv = self._tesseract(band.resize(size, Image.Resampling.LANCZOS), f"{zone}@{scale:g}")
                words.extend(parse_tsv(tsv, zone, (left, top), scale, first_index=len(words)))
            if zone == HEADER_ZONE and self.settings.header_norm_scales:
                normed = local_normalize(band)
                for scale in () if mostly_texture(normed) else self.settings.header_norm_scales:
                    size = (max(1, round(band.width * scale)), max(1, round(band.height * scale)))
                    tsv = self._tesseract(normed.resize(size, Image.Resampling.LANCZOS), f"{zone} normalized@{scale:g}")
                    words.extend(parse_tsv(tsv, zone, (left, top), scale, len(words), f"{zone}@norm{scale:g}"))
        words = words + self._plate_line(grey, words)
        return words + self._caption_line(grey, words)

    def _caption_line(self, grey: Image.Image, words: list[OcrWord]) -> list[OcrWord]:
        """Re-reads (``--psm 6``, pass ``caption@line<scale>``) of the caption row of all-capital
        words (at least 4 letters, centre in the ``CENTRE`` band of the width) with the highest
        :func:`_pair_score`: the engraved binomial, whose letter-spaced small capitals sparse-text
        mode splits."""
        low, high = CENTRE[0] * grey.width, CENTRE[1] * grey.width
        capitals = [
            w for w in words if w.zone == CAPTION_ZONE and low <= w.box[0] + w.box[2] / 2 <= high
            and sum(ch.isupper() for ch in w.text) >= 4 and sum(ch.isupper() for ch in w.text) >= 0.8 * sum(ch.isalpha() for ch in w.text)
        ]  # fmt: skip
        if not capitals or not self.settings.caption_line_scales:
            return []
        _, y, _, height = max(capitals, key=lambda w: (_pair_score(w, capitals), w.confidence)).box
        box = (round(low), max(0, y - height), round(high), min(grey.height, y + 2 * height))
        row = grey.crop(box)
        found: list[OcrWord] = []
        for scale in self.settings.caption_line_scales:
            size = (round(row.width * scale), round(row.height * scale))
            tsv = self._tesseract(row.resize(size, Image.Resampling.LANCZOS), f"caption line@{scale:g}", psm=6)
            found.extend(parse_tsv(tsv, CAPTION_ZONE, box[:2], scale, len(words) + len(found), f"{CAPTION_ZONE}@line{scale:g}"))
        return found

    def _plate_line(self, grey: Image.Image, words: list[OcrWord]) -> list[OcrWord]:
        """Second reads of the header line "PLATE <numeral>" around the most confident PLATE word
        of the header passes, per scale of ``plate_line_scales``: Tesseract on the line crop
        (``--psm 7``, characters limited to :data:`LINE_WHITELIST`; pass ``header@line<scale>``),
        and the numeral's glyph shapes (:func:`read_numeral`; pass ``header@glyphs<scale>``, a
        copy of the PLATE word and the numeral, both with the PLATE word's confidence), and the
        numeral's trailing I's from its strokes (:func:`stroke_tail`; pass ``header@tail<scale>``,
        one word of that many I's with the PLATE word's confidence, when there is one or more). The
        numeral crop runs from the end of PLATE (its share of a merged word such as
        ``PLATE,LVII``) 2.2 word widths right, half a word height above and below; the line crop
        starts one word height left of PLATE."""
        plates = [w for w in words if w.zone == HEADER_ZONE and _PLATE_WORD.match(w.text.upper())]
        if not plates or not self.settings.plate_line_scales:
            return []
        plate = max(plates, key=lambda w: w.confidence)
        x, y, width, height = plate.box
        crop = numeral_crop(plate, grey.width, grey.height)
        if crop is None:
            return []
        line_box = (max(0, x - height), crop[1], crop[2], crop[3])
        line = grey.crop(line_box)
        if is_faint(line):  # faint ink: read the locally normalized line (instruments.local_contrast)
            line = normalized_crop(grey, line_box)
        region = line.crop((crop[0] - line_box[0], 0, line.width, line.height))  # the numeral: the line's right part
        found: list[OcrWord] = []
        for scale in self.settings.plate_line_scales:
            size = (round(line.width * scale), round(line.height * scale))
            tsv = self._tesseract(line.resize(size, Image.Resampling.LANCZOS), f"header line@{scale:g}", psm=7, whitelist=LINE_WHITELIST)
            found.extend(parse_tsv(tsv, HEADER_ZONE, line_box[:2], scale, len(words) + len(found), f"{HEADER_ZONE}@line{scale:g}"))
            size = (round(region.width * scale), round(region.height * scale))
            scaled = np.asarray(region.resize(size, Image.Resampling.LANCZOS))
            box = (crop[0], y, crop[2] - crop[0], height)
            tail = stroke_tail(scaled, 0.8 * height * scale)
            if tail:
                pass_id = f"{HEADER_ZONE}@tail{scale:g}"
                found.append(OcrWord("I" * tail, plate.confidence, box, f"{pass_id}:1.1.1", HEADER_ZONE, len(words) + len(found), pass_id))
            for kind, numeral in (("glyphs", read_numeral(scaled, 0.8 * height * scale)),
                                  ("templates", read_numeral_by_template(scaled, 0.8 * height * scale))):  # fmt: skip
                if numeral is None:
                    continue
                pass_id = f"{HEADER_ZONE}@{kind}{scale:g}"
                for text, word_box in (("PLATE", plate.box), (numeral, box)):
                    found.append(OcrWord(text, plate.confidence, word_box, f"{pass_id}:1.1.1", HEADER_ZONE, len(words) + len(found), pass_id))
        return found

    def _tesseract(self, band: Image.Image, zone: str, psm: int | None = None, whitelist: str = "") -> str:
        buffer = io.BytesIO()
        band.save(buffer, format="PNG")
        command = [
            self.install.binary, "stdin", "stdout", "-l", self.languages,
            "--psm", str(psm or self.settings.psm), "--oem", str(self.settings.oem),
            *(["-c", f"tessedit_char_whitelist={whitelist}"] if whitelist else []), "tsv",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, input=buffer.getvalue(), capture_output=True, timeout=self.settings.timeout_seconds, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise InstrumentError(
                f"tesseract took over {self.settings.timeout_seconds:g} s on the {zone} zone; raise timeout_seconds"
            ) from exc
        if done.returncode != 0:
            raise InstrumentError(
                f"{' '.join(command)} exited {done.returncode} on the {zone} zone: {done.stderr.decode(errors='replace')[:300]}"
            )
        return done.stdout.decode("utf-8", errors="replace")
