"""A weak annotation parsed from a plate's OCR words: plate number, Latin binomial, common name.

Pure code over :class:`~awb_dagster.instruments.tesseract.OcrWord` lists. Each field keeps its
confidence (mean word confidence, lowered when the parse had to repair the text) and the indices
of the OCR words it came from, so a reader can see why a value was read. These are weak signals:
they never overwrite a plate's identity fields.

Heuristics (declared in :data:`PARSER_VERSION`, which goes into the preprocess tag). Each zone
is read at several scales (``pass_id``); the parser works per read and votes across reads:
- plate number: in the header zone, the numeral after ``PLATE`` (words of a visual row joined
  without spaces, so ``PLAT EXI`` still reads ``PLATE XI``); Arabic digits, or a Roman numeral
  in canonical form after mapping the digit/bar lookalikes ``1 l | !`` to ``I``. A value whose
  fascicle (a number elsewhere in the header, ``No. N``: plates 5N-4..5N of the Havell edition)
  was read wins, then a corroborated glyph or template read, then a completed read (a Tesseract read's
  letters up to its last X or V plus the trailing I's counted from the numeral's strokes), then
  a value read without repair, then the value most reads agree on; values above :data:`PLATES`
  are no reading;
- Latin binomial: in the caption zone's centre band (:data:`CENTRE_BAND`), a run of
  capitalised words (of more than two, the adjacent pair read most confidently) (engraved small capitals, each at least :data:`MIN_NAME_LETTERS`
  letters, no inner periods, word confidence at least :data:`MIN_NAME_CONFIDENCE`) on one row; two words over one, then the words most reads agree on;
- common name: the words before the binomial on its row, else the caption row just above it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from awb_dagster.instruments.tesseract import CAPTION_ZONE, CENTRE, HEADER_ZONE, OcrWord

PARSER_VERSION = "label-parse-6"
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_ROMAN_LOOKALIKES = str.maketrans({"1": "I", "l": "I", "|": "I", "!": "I", "i": "I"})
# the numeral ends at a non-letter ("PLATE,IVU." is no reading of IV)
_PLATE_RE = re.compile(r"P[LI1|]AT(?:E|F)?[.,:;]*([0-9IVXLCDMl1|!i]+)(?![A-Za-z])", re.IGNORECASE)
# possessive E: a lone "PLATE" has no numeral (its E read as one gave an empty skeleton that
# corroborated any all-I glyph read, label-parse-5)
_PLATE_RAW = re.compile(r"P[LI1|]AT(?:E|F)?+[.,:;]*([0-9A-Za-z|!]+)", re.IGNORECASE)
_NOT_NAMES = frozenset({"PLATE", "DRAWN", "NATURE", "ENGRAVED", "PRINTED", "COLOURED", "LONDON", "PUBLISHED"})
# The title lines (common name, binomial) are centred; the artist's and engraver's lines sit at
# the left and right edges: caption words count only with their centre in this band of the width.
CENTRE_BAND = CENTRE
MIN_NAME_LETTERS = 4  # genus and species words are longer than initials (F.R.S. read as "RSE")
MIN_NAME_CONFIDENCE = 0.05  # a name word Tesseract is this unsure of is noise, not a weak read
REPAIR_PENALTY = 0.5  # confidence factor of a value the parser had to repair (lookalike mapping)
PLATES = 435  # the Havell edition's plates: a larger number is a misreading


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


def _passes(words: Sequence[OcrWord], zone: str) -> dict[str, list[OcrWord]]:
    """The zone's words per read (``pass_id``), in order of the passes."""
    passes: dict[str, list[OcrWord]] = {}
    for word in words:
        if word.zone == zone:
            passes.setdefault(word.pass_id, []).append(word)
    return passes


def _lines(words: Sequence[OcrWord]) -> list[list[OcrWord]]:
    """Words of one read in visual rows, left to right: a word joins the row whose vertical
    centre lies within half its height (sparse-text mode gives far-apart words of one engraved
    line, such as ``PLATE`` and ``1``, different Tesseract line ids)."""
    rows: list[list[OcrWord]] = []
    for word in sorted(words, key=lambda w: w.box[1] + w.box[3] / 2):
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


def _plate_candidate(line: list[OcrWord]) -> tuple[int, bool, list[OcrWord], str] | None:
    """(value, repaired, words, text) of a header row naming a plate."""
    joined, owners = "", []
    for word in line:
        joined += word.text
        owners.extend([word] * len(word.text))
    match = _PLATE_RE.search(joined)
    parsed = parse_numeral(match.group(1)) if match else None
    if match is None or parsed is None:
        return None
    used = list(dict.fromkeys(owners[match.start(): match.end()]))
    return parsed[0], parsed[1], used, match.group(0)


def _skeleton(numeral: str) -> str:
    """The letters of a numeral before its first I, I-lookalike or non-numeral character (where
    Tesseract's trouble starts): ``CCCH`` -> ``CCC``, ``CCLIIL`` -> ``CCL``, ``Cif`` -> ``C``."""
    mapped = numeral.translate(_ROMAN_LOOKALIKES)
    end = next((i for i, ch in enumerate(mapped) if ch not in "CLXVDM"), len(mapped))
    return mapped[:end]


def _completion(skeleton: str) -> str | None:
    """The letters of a Tesseract numeral read that trailing I's counted from strokes may follow:
    the read up to its last X or V when it ends there (``LXXXV``) or is no valid numeral
    (``LXXXL``: the letters after the last X are a misread I); None when a valid read ends in C
    or L (``CXC``: that C's upright stroke would be counted as an I) or has no X or V."""
    end = max(skeleton.rfind("X"), skeleton.rfind("V"))
    if end < 0 or (end < len(skeleton) - 1 and roman_to_int(skeleton) is not None):
        return None
    return skeleton[: end + 1]


def plate_number(words: Sequence[OcrWord]) -> LabelField | None:
    """The plate number voted across the header reads. Reads of the numeral's glyph shapes
    (pass ids ``header@glyphs*``, from :mod:`roman_glyphs`) count only when corroborated: their
    letters before the first I equal those of a Tesseract read after PLATE (Tesseract reads C,
    L, X well and runs of serif-joined I's badly, the glyph reader the other way round). Ranking: a
    value whose fascicle (``No. N``: plates 5N-4 to 5N in the Havell edition) was read, then a
    corroborated glyph read, then a completed read (:func:`_completion` of a Tesseract read plus
    the trailing I's of a ``header@tail*`` read, from :func:`roman_glyphs.stroke_tail`), then a
    value read without repair, then the value most reads agree on. A read by nearest template
    (``header@templates*``, :mod:`roman_templates`) counts as corroborated when at least two
    scales read its value and a Tesseract read's letters before its first I (at least one)
    begin it (``CCC`` of ``CCCAAA`` begins the template read ``CCCXXX``)."""
    candidates, glyph_reads, template_reads = [], [], []
    fascicles: set[int] = set()
    skeletons: list[str] = []
    tails: list[OcrWord] = []
    for pass_id, read in _passes(words, HEADER_ZONE).items():
        if pass_id.startswith(f"{HEADER_ZONE}@tail"):
            tails.extend(w for w in read if set(w.text) == {"I"})
            continue
        template = pass_id.startswith(f"{HEADER_ZONE}@templates")
        glyphs = template or pass_id.startswith(f"{HEADER_ZONE}@glyphs")
        used_here: set[OcrWord] = set()
        for line in _lines(read):
            found = _plate_candidate(line)
            if found is not None:
                (template_reads if template else glyph_reads if glyphs else candidates).append(found)
                used_here.update(found[2])
            if not glyphs:
                raw = _PLATE_RAW.search("".join(w.text for w in line))
                if raw and not raw.group(1).isdigit():  # an Arabic read corroborates no Roman one
                    skeletons.append(_skeleton(raw.group(1)))
        fascicles |= {int(w.text.strip(".,:;°")) for w in read if w not in used_here and w.text.strip(".,:;°").isdigit()}
    corroborated = [found for found in glyph_reads if _skeleton(found[3].split("PLATE")[-1]) in skeletons]
    template_votes = Counter(value for value, *_ in template_reads)
    corroborated += [
        found for found in template_reads if template_votes[found[0]] >= 2
        and any(skeleton and found[3].split("PLATE")[-1].startswith(skeleton) for skeleton in skeletons)
    ]  # fmt: skip
    completed = []
    for tail in tails:
        for letters in filter(None, map(_completion, skeletons)):
            value = roman_to_int(letters + tail.text)
            if value is not None:
                completed.append((value, False, [tail], f"PLATE {letters}+{tail.text}"))
    candidates = [c for c in [*candidates, *corroborated, *completed] if 1 <= c[0] <= PLATES]
    if not candidates:
        return None
    votes = Counter(value for value, *_ in candidates)
    completed_votes = Counter(value for value, *_ in completed)

    def rank(candidate: tuple[int, bool, list[OcrWord], str]) -> tuple[bool, bool, int, bool, int, float]:
        value, repaired, used, _ = candidate
        return ((value + 4) // 5 in fascicles, candidate in corroborated, completed_votes[value] if candidate in completed else 0,
                not repaired, votes[value], _mean_confidence(used))  # fmt: skip

    value, repaired, used, text = max(candidates, key=rank)
    agreement = votes[value] / len(candidates)
    confidence = _mean_confidence(used) * agreement * (REPAIR_PENALTY if repaired else 1.0)
    return LabelField(value, round(confidence, 4), tuple(w.word_index for w in used), text)


def _is_capitals(word: OcrWord) -> bool:
    letters = [ch for ch in word.text if ch.isalpha()]
    if "." in word.text.strip(".,;:"):  # initials such as F.R.S.E.L.S. are not a name
        return False
    if word.confidence < MIN_NAME_CONFIDENCE:  # hatching or script read as capitals ("LEEPER", 0.0)
        return False
    return len(letters) >= MIN_NAME_LETTERS and sum(ch.isupper() for ch in letters) >= 0.8 * len(letters)


def _name_runs(lines: list[list[OcrWord]]) -> list[tuple[list[OcrWord], list[OcrWord], int]]:
    """(the binomial pair of a run of capitalised words, the words before it on its line, line number)."""
    runs = []
    for number, line in enumerate(lines):
        run: list[OcrWord] = []
        for position, word in enumerate([*line, None]):
            if word is not None and _is_capitals(word) and _letters(word).upper() not in _NOT_NAMES:
                run.append(word)
                continue
            if run:
                runs.append((_best_pair(run), line[: position - len(run)], number))
                run = []
    return runs


def _best_pair(run: list[OcrWord]) -> list[OcrWord]:
    """The binomial of a run of capitalised words: the run itself up to two words; of a longer
    run (a letter-spaced word split in two: ``CLAN GULAY VULGARIS``) the adjacent pair with the
    highest mean confidence."""
    if len(run) <= 2:
        return run
    return max((run[i : i + 2] for i in range(len(run) - 1)), key=_mean_confidence)


def _binomial(words: Sequence[OcrWord]) -> str:
    return " ".join(_letters(w).capitalize() if i == 0 else _letters(w).lower() for i, w in enumerate(words))


def latin_and_common(words: Sequence[OcrWord], width: int) -> tuple[LabelField | None, LabelField | None]:
    """The Latin binomial voted across the caption reads (two words over one; then the reading
    most reads agree on, word by word; then confidence), and the common name of the same read."""
    low, high = CENTRE_BAND[0] * width, CENTRE_BAND[1] * width
    candidates = []
    for read in _passes(words, CAPTION_ZONE).values():
        lines = _lines([w for w in read if low <= w.box[0] + w.box[2] / 2 <= high])
        candidates.extend((latin, before, lines, number) for latin, before, number in _name_runs(lines))
    if not candidates:
        return None, None
    word_votes = Counter(_letters(w).casefold() for latin, *_ in candidates for w in latin)

    def rank(candidate: tuple[list[OcrWord], list[OcrWord], list, int]) -> tuple[int, int, float]:
        latin = candidate[0]
        return (len(latin), sum(word_votes[_letters(w).casefold()] for w in latin), _mean_confidence(latin))

    latin, before, lines, number = max(candidates, key=rank)
    agreement = min(1.0, sum(word_votes[_letters(w).casefold()] for w in latin) / (len(latin) * len(_passes(words, CAPTION_ZONE))))
    latin_field = LabelField(
        _binomial(latin), round(_mean_confidence(latin) * agreement, 4), tuple(w.word_index for w in latin),
        " ".join(w.text for w in latin),
    )  # fmt: skip
    common_words = before or _line_above(lines, lines[number])
    common = None
    if common_words:
        common = LabelField(
            " ".join(_letters(w) for w in common_words if _letters(w)), _mean_confidence(common_words),
            tuple(w.word_index for w in common_words), " ".join(w.text for w in common_words),
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
