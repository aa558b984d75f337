"""Reading an engraved Roman plate numeral from its glyph shapes (no Tesseract). Pure numpy/scipy.

Why: the Havell plates engrave "PLATE CCCIII." in serif capitals whose hairline serifs join a run
of I's into one shape; Tesseract reads that run as ``H``, ``Il``, ``1u``, ``Cif``, so the plate
number comes out 101 for CIII, 151 for CLIII. The numerals use five letters (C, L, X, V, I), all
upright, so a few declared shape rules read them (version :data:`GLYPH_VERSION`, in the
preprocess tag):

- ink masks relative to the crop's paper (median grey) and ink (1st percentile) levels: a
  lenient mask (``paper - LENIENT * contrast``) keeps the hairlines, so each letter (or a
  serif-joined run of I's) is one connected component; a strict mask (``STRICT``) keeps only
  the thick stems;
- letters: components (x-overlapping pieces merged) between ``MIN_HEIGHT`` and ``MAX_HEIGHT``
  times the cap height, left to right, until a gap wider than ``MAX_GAP`` cap heights; a
  letter-height piece with no stem ink in its middle band (a faint mark) is skipped;
- per letter, the strict ink runs across its middle band (40-60% of its height) are its stems,
  and the lenient ink of its top and bottom bands (20% each) its serifs or arms:
  two or more stems -> V when the top has two arms far apart and the bottom is narrow, else one
  I per stem; one stem -> I when the letter is narrow (width < ``NARROW`` x height); C when the
  stem is the letter's left edge, ends before its middle and the top reaches right; L when wide
  with a bottom bar; X when top and bottom both have two separate arms; V when only the top
  has; I when the stem is centred and under half the width. Anything else
  (an Arabic digit, a smudge) makes the whole reading None: no partial numerals.

Version 2 adds :func:`stroke_tail`, the count of trailing I's, for numerals whose X's and V's
are serif-joined into one shape with their neighbours (``LXXXVIII``): only the rows from
``BAND`` of the cap height (cap top and baseline from the rows where the lenient ink of the crop
is densest) are kept, so the serifs that join letters fall away, and each remaining
``STRICT`` ink component at least ``MIN_STROKE`` of the band high is a stroke: upright
(horizontal drift top to bottom at most ``UPRIGHT`` cap heights, width at most ``STEM_WIDTH``)
or not (the slanted and crossed strokes of X and V, C's bowl). Strokes further apart than
``MAX_GAP`` end the numeral. The tail is the number of upright strokes after the last other
one; with no slanted stroke at all (C, L and I only, which :func:`read_numeral` reads) there
is no tail reading.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GLYPH_VERSION = "roman-glyphs-2"
LENIENT = 0.08  # fraction of the paper-ink contrast: hairlines kept
STRICT = 0.4  # stems only
MIN_CONTRAST = 40  # grey levels between paper and ink, else no text here
MIN_HEIGHT, MAX_HEIGHT = 0.6, 1.5  # letter height in cap heights
MAX_GAP = 1.2  # cap heights between letters before the numeral ends
NARROW = 0.45
BAND = (0.25, 0.7)  # rows of the cap height kept for strokes (serifs and feet fall away)
MIN_STROKE = 0.6  # of the band's height
UPRIGHT = 0.06  # cap heights of drift from the band's top rows to its bottom rows
STEM_WIDTH = 0.3  # cap heights


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], row.astype(np.int8), [0]])
    edges = np.diff(padded)
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _band(mask: np.ndarray, low: float, high: float) -> np.ndarray:
    h = mask.shape[0]
    start = int(low * h)
    return mask[start : max(start + 1, int(high * h))].any(axis=0)


def classify(lenient: np.ndarray, strict: np.ndarray) -> str | None:
    """The letter(s) of one glyph from its lenient and strict ink masks ("" for a faint mark)."""
    h, w = lenient.shape
    stems = [run for run in _runs(_band(strict, 0.4, 0.6)) if run[1] - run[0] >= 1]
    if not stems:
        return ""
    top_ink, bottom_ink = _band(lenient, 0.0, 0.2), _band(lenient, 0.8, 1.0)
    top, bottom = _runs(top_ink), _runs(bottom_ink)

    def apart(runs: list[tuple[int, int]]) -> bool:
        return len(runs) >= 2 and runs[-1][0] - runs[0][1] >= 0.3 * w

    top_right = int(np.flatnonzero(top_ink).max()) / w
    bottom_cols = np.flatnonzero(bottom_ink)
    if len(stems) >= 2:
        if apart(top) and (bottom_cols.max() - bottom_cols.min()) < 0.4 * w:
            return "V"
        return "I" * len(stems)
    left, right = stems[0][0] / w, stems[0][1] / w
    if w / h < NARROW:
        return "I"
    if left < 0.1 and right < 0.5 and top_right > 0.6:
        return "C"
    if w / h >= 0.55 and (left + right) / 2 < 0.45 and bottom_cols.max() / w > 0.75:
        return "L"
    if apart(top) and apart(bottom):
        return "X"
    if apart(top):
        return "V"
    if abs((left + right) / 2 - 0.5) < 0.2 and right - left < 0.5:
        return "I"
    return None


def segment(grey: np.ndarray, cap_height: float, threshold: float = LENIENT) -> list[tuple[int, int, np.ndarray, np.ndarray]] | None:
    """The letter-height glyphs of a crop, left to right: (left, right, mask, strict mask) of each
    component of the ink mask at ``threshold`` of the paper-ink contrast (x-overlapping pieces
    merged); None when the crop holds no ink contrast."""
    grey = np.asarray(grey, dtype=np.float32)
    paper, ink = float(np.median(grey)), float(np.percentile(grey, 1))
    if paper - ink < MIN_CONTRAST or cap_height <= 0:
        return None
    lenient = grey < paper - threshold * (paper - ink)
    strict = grey < paper - STRICT * (paper - ink)
    labels, _ = ndimage.label(lenient, structure=np.ones((3, 3), dtype=bool))
    pieces = sorted(
        (s[1].start, s[1].stop, s[0].start, s[0].stop, index + 1)
        for index, s in enumerate(ndimage.find_objects(labels)) if s is not None
    )  # fmt: skip
    glyphs: list[list] = []
    for x0, x1, y0, y1, label in pieces:
        if glyphs and x0 < glyphs[-1][1] - 1:  # overlapping columns: one letter broken in pieces
            last = glyphs[-1]
            glyphs[-1] = [last[0], max(last[1], x1), min(last[2], y0), max(last[3], y1), [*last[4], label]]
        else:
            glyphs.append([x0, x1, y0, y1, [label]])
    out = []
    for x0, x1, y0, y1, labels_of in glyphs:
        if MIN_HEIGHT * cap_height <= y1 - y0 <= MAX_HEIGHT * cap_height:
            mask = np.isin(labels[y0:y1, x0:x1], labels_of)
            out.append((x0, x1, mask, strict[y0:y1, x0:x1] & mask))
    return out


def read_numeral(grey: np.ndarray, cap_height: float) -> str | None:
    """The Roman numeral in a greyscale crop that starts just after the word PLATE, or None."""
    glyphs = segment(grey, cap_height)
    if glyphs is None:
        return None
    text, last_right = "", None
    for x0, x1, mask, strict in glyphs:
        if last_right is not None and x0 - last_right > MAX_GAP * cap_height:
            break
        letters = classify(mask, strict)
        if letters is None:
            return None
        if letters:
            text, last_right = text + letters, x1
    return text or None


def _cap_rows(lenient: np.ndarray, cap_height: float) -> tuple[int, int] | None:
    """(top, bottom) rows of the text line: the longest run of rows holding at least a quarter
    of the densest row's lenient ink, if at least half a cap height tall."""
    profile = lenient.sum(axis=1)
    if profile.max() == 0:
        return None
    runs = [run for run in _runs(profile >= 0.25 * profile.max()) if run[1] - run[0] >= 0.5 * cap_height]
    return max(runs, key=lambda run: run[1] - run[0]) if runs else None


def stroke_tail(grey: np.ndarray, cap_height: float) -> int | None:
    """The number of upright strokes (I's) after the last slanted or crossed stroke of the
    numeral in a crop that starts just after the word PLATE; None without a slanted stroke."""
    grey = np.asarray(grey, dtype=np.float32)
    paper, ink = float(np.median(grey)), float(np.percentile(grey, 1))
    if paper - ink < MIN_CONTRAST or cap_height <= 0:
        return None
    rows = _cap_rows(grey < paper - LENIENT * (paper - ink), cap_height)
    if rows is None:
        return None
    height = rows[1] - rows[0]
    first, last = rows[0] + int(BAND[0] * height), rows[0] + int(BAND[1] * height)
    band = grey[first:last] < paper - STRICT * (paper - ink)
    labels, _ = ndimage.label(band, structure=np.ones((3, 3), dtype=bool))
    strokes: list[tuple[int, int, bool]] = []
    for index, found in enumerate(ndimage.find_objects(labels)):
        if found is None:
            continue
        mask = labels[found] == index + 1
        h, w = mask.shape
        if h < MIN_STROKE * (last - first):
            continue
        edge = max(1, round(0.15 * h))
        top_cols, bottom_cols = np.flatnonzero(mask[:edge].any(axis=0)), np.flatnonzero(mask[-edge:].any(axis=0))
        drift = abs(bottom_cols.mean() - top_cols.mean()) / height
        strokes.append((found[1].start, found[1].stop, drift <= UPRIGHT and w <= STEM_WIDTH * height))
    strokes.sort()
    numeral: list[bool] = []
    for position, (x0, _, upright) in enumerate(strokes):
        if numeral and x0 - strokes[position - 1][1] > MAX_GAP * height:
            break
        numeral.append(upright)
    if all(numeral):
        return None
    return len(numeral) - 1 - max(i for i, upright in enumerate(numeral) if not upright)
