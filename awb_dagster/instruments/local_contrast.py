"""Local contrast normalization of a greyscale band (a declared OCR preprocessing step). Pure numpy + scipy.

Some plates engrave the header in faint brown ink (lightest ink ~160 of 255 on a ~254 paper),
which Tesseract's global binarization of a band also holding dark picture parts loses. Version
:data:`NORM_VERSION` (in the preprocess tag): per pixel, the darkest and lightest grey within a
``window`` x ``window`` neighbourhood (minimum / maximum filters) set a local range; where that
range is at least ``min_range`` grey levels the pixel is stretched to ``255 * (v - lo) / (hi - lo)``
(faint strokes become black on white paper), elsewhere (blank paper, flat colour) it becomes white.
A band whose normalized image is over :data:`MAX_DARK_SHARE` dark (a textured picture, not paper
with text: Tesseract crawls over it for minutes) is :func:`mostly_texture` and not read again.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import maximum_filter, minimum_filter, uniform_filter

NORM_VERSION = "local-norm-1"
WINDOW = 41  # plate pixels: about 2.5 header cap heights on a 2,000-px scan
MIN_RANGE = 24  # grey levels: a smaller local range is paper texture, not ink
MAX_DARK_SHARE = 0.15  # share of pixels under 128 after normalization above which a band is picture texture


def local_normalize(band: Image.Image, window: int = WINDOW, min_range: int = MIN_RANGE) -> Image.Image:
    """The greyscale ``band`` with its local range stretched to 0-255 (see the module text)."""
    if band.mode != "L":
        raise ValueError(f"local_normalize needs a greyscale (mode L) image, got mode {band.mode}")
    grey = np.asarray(band, dtype=np.float32)
    lo = uniform_filter(minimum_filter(grey, size=window), size=window // 2)
    hi = uniform_filter(maximum_filter(grey, size=window), size=window // 2)
    span = hi - lo
    stretched = np.clip(255.0 * (grey - lo) / np.maximum(span, 1.0), 0.0, 255.0)
    stretched[span < min_range] = 255.0
    return Image.fromarray(stretched.astype(np.uint8), mode="L")


def normalized_crop(grey: Image.Image, box: tuple[int, int, int, int], window: int = WINDOW) -> Image.Image:
    """``grey.crop(box)`` after :func:`local_normalize` of the box grown by ``window`` on each side
    (within the image), so that the filters see the crop's surroundings."""
    left, top, right, bottom = box
    outer = (max(0, left - window), max(0, top - window), min(grey.width, right + window), min(grey.height, bottom + window))
    inner = (left - outer[0], top - outer[1], right - outer[0], bottom - outer[1])
    return local_normalize(grey.crop(outer), window).crop(inner)


def is_faint(crop: Image.Image, darkest: int = 128) -> bool:
    """True when the darkest 1 % of ``crop`` is lighter than ``darkest`` (faint ink, no picture)."""
    return bool(np.percentile(np.asarray(crop), 1.0) > darkest)


def mostly_texture(normalized: Image.Image) -> bool:
    """True when over MAX_DARK_SHARE of a normalized band is dark (under 128): picture texture."""
    return bool((np.asarray(normalized) < 128).mean() > MAX_DARK_SHARE)
