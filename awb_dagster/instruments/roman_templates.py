"""Reading an engraved Roman plate numeral by nearest template (no Tesseract). Pure numpy.

The Havell plates engrave every header in the same serif capitals, so the glyphs of a numeral
(segmented by :func:`roman_glyphs.segment` at the ``STRICT`` ink level, where the hairline serifs
that join letters mostly fall away: one component per letter, or per still-joined run of I's) look alike on every plate. Version :data:`TEMPLATE_VERSION` (in the
preprocess tag): each glyph's ink mask is scaled to :data:`SIZE` rows (width kept in
proportion, up to :data:`SIZE` x ``WIDTH_RATIO`` columns, centred), centred to zero mean and
unit norm; its class is the template with the highest correlation less ``ASPECT_WEIGHT`` times
the absolute log ratio of its width/height to the template's mean (an I and an L differ mostly
in width), when that is at least :data:`MIN_CORRELATION`, else the whole reading is None (no partial numerals). A glyph with no
stem ink in its middle band is a faint mark and skipped; a gap wider than ``MAX_GAP`` cap heights
ends the numeral.

The templates are data (``data/roman_templates.json``): the mean normalized glyph per class
(``C L X V I II III``...) over the header numerals of tuning plates whose glyph count matched
their engraved numeral; the file names the plates, the source commit and the builder
(``bench/build_roman_templates.py``). Held-out plates are never in it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from awb_dagster.instruments.roman_glyphs import STRICT, _band, segment

TEMPLATE_VERSION = "roman-templates-1"
SIZE = 16  # rows of a normalized glyph
WIDTH_RATIO = 2  # columns = SIZE * WIDTH_RATIO; a glyph wider than that is squeezed
MIN_CORRELATION = 0.5
ASPECT_WEIGHT = 0.5  # score = correlation - ASPECT_WEIGHT * |log(width/height over the template's)|: I is narrow, L wide
MAX_GAP = 2.0  # cap heights between glyphs before the numeral ends (strict ink leaves wider gaps)
TEMPLATES_PATH = Path(__file__).resolve().parent / "data" / "roman_templates.json"


def normalize(mask: np.ndarray) -> np.ndarray:
    """A glyph mask -> a zero-mean unit-norm vector of SIZE x SIZE*WIDTH_RATIO (glyph centred)."""
    h, w = mask.shape
    width = max(1, min(SIZE * WIDTH_RATIO, round(SIZE * w / h)))
    scaled = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, SIZE), Image.Resampling.BILINEAR),
                        dtype=np.float32) / 255.0  # fmt: skip
    canvas = np.zeros((SIZE, SIZE * WIDTH_RATIO), dtype=np.float32)
    start = (SIZE * WIDTH_RATIO - width) // 2
    canvas[:, start : start + width] = scaled
    vector = canvas.ravel() - canvas.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def numeral_glyphs(grey: np.ndarray, cap_height: float) -> list[np.ndarray] | None:
    """The strict ink masks of the numeral's glyphs, left to right, faint marks dropped, up to the
    first gap wider than MAX_GAP cap heights; None without ink contrast."""
    glyphs = segment(grey, cap_height, threshold=STRICT)
    if glyphs is None:
        return None
    out, last_right = [], None
    for x0, x1, mask, strict in glyphs:
        if not _band(strict, 0.4, 0.6).any():
            continue
        if last_right is not None and x0 - last_right > MAX_GAP * cap_height:
            break
        out.append(mask)
        last_right = x1
    return out


@lru_cache(maxsize=4)
def load_templates(path: Path = TEMPLATES_PATH) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(class names, matrix of their unit-norm template vectors, their mean width/height) from the data file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != TEMPLATE_VERSION or data.get("size") != [SIZE, SIZE * WIDTH_RATIO]:
        raise ValueError(f"{path}: templates are {data.get('version')} {data.get('size')}, expected "
                         f"{TEMPLATE_VERSION} {[SIZE, SIZE * WIDTH_RATIO]}; rebuild with bench/build_roman_templates.py")  # fmt: skip
    names = tuple(sorted(data["templates"]))
    matrix = np.stack([np.asarray(data["templates"][name]["vector"], dtype=np.float32) for name in names])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    aspects = np.asarray([data["templates"][name]["aspect"] for name in names], dtype=np.float32)
    return names, matrix, aspects


def read_numeral_by_template(grey: np.ndarray, cap_height: float, path: Path = TEMPLATES_PATH) -> str | None:
    """The Roman numeral in a crop that starts just after the word PLATE, by nearest template."""
    glyphs = numeral_glyphs(grey, cap_height)
    if not glyphs:
        return None
    names, matrix, aspects = load_templates(path)
    text = ""
    for mask in glyphs:
        scores = matrix @ normalize(mask) - ASPECT_WEIGHT * np.abs(np.log(mask.shape[1] / mask.shape[0] / aspects))
        best = int(np.argmax(scores))
        if scores[best] < MIN_CORRELATION:
            return None
        text += names[best]
    return text
