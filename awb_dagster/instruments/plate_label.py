"""A weak annotation parsed from a plate's OCR words: plate number, Latin binomial, common name.

Pure code over :class:`~awb_dagster.instruments.tesseract.OcrWord` lists. Each field keeps its
confidence (mean word confidence, lowered when the parse had to repair the text) and the indices
of the OCR words it came from, so a reader can see why a value was read. These are weak signals:
they never overwrite a plate's identity fields.

Heuristics (declared in :data:`PARSER_VERSION`, which goes into the preprocess tag):
- plate number: in the header zone, the numeral after ``PLATE`` (words of a line joined without
  spaces, so ``PLAT EXI`` still reads ``PLATE XI``); Arabic digits, or a Roman numeral in
  canonical form after mapping the digit/bar lookalikes ``1 l | !`` to ``I``;
- Latin binomial: in the caption zone's centre band (:data:`CENTRE_BAND`), the first two of the longest run of capitalised words
  (engraved small capitals, each at least :data:`MIN_NAME_LETTERS` letters) on one line;
- common name: the words before the binomial on its line, else the caption line just above it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from awb_dagster.instruments.tesseract import CAPTION_ZONE, HEADER_ZONE, OcrWord

PARSER_VERSION = "label-parse-1"
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_ROMAN_LOOKALIKES = str.maketrans({"1": "I", "l": "I", "|": "I", "!": "I", "i": "I"})
_PLATE_RE = re.compile(r"P[LI1|]AT(?:E|F)?[.,:;]*([0-9IVXLCDMl1|!i]+)", re.IGNORECASE)
_NOT_NAMES = frozenset({"PLATE", "DRAWN", "NATURE", "ENGRAVED", "PRINTED", "COLOURED", "LONDON", "PUBLISHED"})
# The title lines (common name, binomial) are centred; the artist's and engraver's lines sit at
# the left and right edges: caption words count only with their centre in this band of the width.
CENTRE_BAND = (0.2, 0.8)
MIN_NAME_LETTERS = 4  # genus and species words are longer than initials (F.R.S. read as "RSE")
REPAIR_PENALTY = 0.5  # confidence factor of a value the parser had to repair (lookalike mapping)


@dataclass(frozen=True)
class LabelField:
    value: str | int
    confidence: float  # [0, 1]
    word_indices: tuple[int, ...]  # OcrWord.word_index of the words it came from
    text: str  # the OCR text it was read from


@dataclass(frozen=True)
class PlateLabel:
    plate_number: LabelField | None
    latin_name: LabelField | None
    common_name: LabelField | None

    def as_dict(self) -> dict[str, dict[str, object] | None]:
        return {
            name: None if field is None else {
                "value": field.value, "confidence": field.confidence,
                "word_indices": list(field.word_indices), "text": field.text,
            }
            for name, field in (("plate_number", self.plate_number), ("latin_name", self.latin_name), ("common_name", self.common_name))
        }  # fmt: skip


def roman_to_int(numeral: str) -> int | None:
    """The value of a canonical Roman numeral (``LXI`` -> 61, ``CCCCXXI`` -> 421, the
    additive form the plates use), None for anything else (``IIIII``, ``VX``, ``IC``)."""
    if not numeral or any(ch not in _ROMAN_VALUES for ch in numeral):
        return None
    total = 0
    for ch, nxt in zip(numeral, numeral[1:] + " "):
        value = _ROMAN_VALUES[ch]
        total += -value if nxt in _ROMAN_VALUES and _ROMAN_VALUES[nxt] > value else value
    return total if total > 0 and numeral in (int_to_roman(total), int_to_roman(total, additive=True)) else None


def int_to_roman(value: int, *, additive: bool = False) -> str:
    """``61`` -> ``LXI``; ``additive`` writes 4s and 9s of hundreds the engravers' way (CCCC)."""
    pairs = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
             (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]  # fmt: skip
    if additive:
        pairs = [pair for pair in pairs if pair[1] not in ("CM", "CD")]
    out = []
    for amount, letters in pairs:
        while value >= amount:
            out.append(letters)
            value -= amount
    return "".join(out)


def _lines(words: Sequence[OcrWord], zone: str) -> list[list[OcrWord]]:
    """The zone's words in visual rows, left to right: a word joins the row whose vertical
    centre lies within half its height (sparse-text mode gives far-apart words of one engraved
    line, such as ``PLATE`` and ``1``, different Tesseract line ids)."""
    rows: list[list[OcrWord]] = []
    for word in sorted((w for w in words if w.zone == zone), key=lambda w: w.box[1] + w.box[3] / 2):
        centre = word.box[1] + word.box[3] / 2
        for row in rows:
            row_centre = sum(w.box[1] + w.box[3] / 2 for w in row) / len(row)
            if abs(centre - row_centre) <= max(word.box[3], row[0].box[3]) / 2:
                row.append(word)
                break
        else:
            rows.append([word])
    return [sorted(row, key=lambda w: w.box[0]) for row in rows]


def _mean_confidence(words: Sequence[OcrWord]) -> float:
    return round(sum(w.confidence for w in words) / len(words), 4) if words else 0.0


def parse_numeral(text: str) -> tuple[int, bool] | None:
    """(value, repaired) of an OCR'd plate numeral: Arabic digits, or Roman after mapping
    lookalikes; trailing punctuation is dropped. None when neither reading is valid."""
    cleaned = text.strip(".,:;")
    if cleaned.isdigit():
        return int(cleaned), False
    mapped = cleaned.translate(_ROMAN_LOOKALIKES).upper()
    value = roman_to_int(mapped)
    if value is None:
        return None
    return value, mapped != cleaned.upper()


def plate_number(words: Sequence[OcrWord]) -> LabelField | None:
    for line in _lines(words, HEADER_ZONE):
        joined, owners = "", []
        for word in line:
            joined += word.text
            owners.extend([word] * len(word.text))
        match = _PLATE_RE.search(joined)
        if match is None:
            continue
        parsed = parse_numeral(match.group(1))
        if parsed is None:
            continue
        value, repaired = parsed
        used = list(dict.fromkeys(owners[match.start(): match.end()]))
        confidence = _mean_confidence(used) * (REPAIR_PENALTY if repaired else 1.0)
        return LabelField(value, round(confidence, 4), tuple(w.word_index for w in used), match.group(0))
    return None


def _is_capitals(word: OcrWord) -> bool:
    letters = [ch for ch in word.text if ch.isalpha()]
    if "." in word.text.strip(".,;:"):  # initials such as F.R.S.E.L.S. are not a name
        return False
    return len(letters) >= MIN_NAME_LETTERS and sum(ch.isupper() for ch in letters) >= 0.8 * len(letters)


def latin_and_common(words: Sequence[OcrWord], width: int) -> tuple[LabelField | None, LabelField | None]:
    best: tuple[int, float, list[OcrWord], list[OcrWord], int] | None = None
    low, high = CENTRE_BAND[0] * width, CENTRE_BAND[1] * width
    lines = _lines([w for w in words if low <= w.box[0] + w.box[2] / 2 <= high], CAPTION_ZONE)
    for number, line in enumerate(lines):
        run: list[OcrWord] = []
        for position, word in enumerate([*line, None]):
            if word is not None and _is_capitals(word) and _letters(word).upper() not in _NOT_NAMES:
                run.append(word)
                continue
            if run:
                start = position - len(run)
                score = (min(len(run), 2), _mean_confidence(run[:2]))
                if best is None or score > best[:2]:
                    best = (*score, run[:2], line[:start], number)
                run = []
    if best is None:
        return None, None
    _, confidence, latin, before, number = best
    latin_field = LabelField(
        " ".join(_letters(w).capitalize() if i == 0 else _letters(w).lower() for i, w in enumerate(latin)),
        confidence, tuple(w.word_index for w in latin), " ".join(w.text for w in latin),
    )  # fmt: skip
    common_words = before or _line_above(lines, lines[number])
    common = None
    if common_words:
        text = " ".join(w.text for w in common_words)
        common = LabelField(
            " ".join(_letters(w) for w in common_words if _letters(w)), _mean_confidence(common_words),
            tuple(w.word_index for w in common_words), text,
        )  # fmt: skip
    return latin_field, common


def _letters(word: OcrWord) -> str:
    return "".join(ch for ch in word.text if ch.isalpha())


def _line_above(lines: list[list[OcrWord]], line: list[OcrWord]) -> list[OcrWord]:
    """The caption line whose bottom is nearest above ``line``'s top and overlaps it horizontally."""
    top = min(w.box[1] for w in line)
    left, right = min(w.box[0] for w in line), max(w.box[0] + w.box[2] for w in line)
    above = [
        other for other in lines
        if other is not line and max(w.box[1] + w.box[3] for w in other) <= top
        and min(w.box[0] for w in other) < right and max(w.box[0] + w.box[2] for w in other) > left
    ]  # fmt: skip
    return max(above, key=lambda other: max(w.box[1] + w.box[3] for w in other), default=[])


def parse_label(words: Sequence[OcrWord], width: int) -> PlateLabel:
    """The label of a plate ``width`` pixels wide from its OCR words."""
    latin, common = latin_and_common(words, width)
    return PlateLabel(plate_number=plate_number(words), latin_name=latin, common_name=common)
