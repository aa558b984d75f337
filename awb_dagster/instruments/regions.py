"""Regions of a plate for region embeddings (seed 8.2): SAM mask crops and a declared tiling.

Plain Python: no Dagster here. A region is cut from the plate decoded at full resolution
under the colour policy, then goes through the embedding instrument's own processor. The
crop policy and the tiling are declared in dataclasses whose ``tag()`` is appended to the
embedder's preprocess tag, so two different region pipelines never share a tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

# Bump when region cutting changes what it computes.
REGIONS_VERSION = "regions-v1"

EdgePolicy = Literal["shift", "pad"]
EDGE_POLICIES: dict[str, str] = {
    "shift": "the last tile of a row/column is shifted inward to end at the plate edge, so every "
    "tile lies inside the plate; a plate smaller than a tile is one tile of the whole plate",
    "pad": "tiles start every `stride` pixels until the plate is covered; the part of a tile past "
    "the plate edge is filled with the fill colour, so every tile is tile_size square",
}


class RegionError(ValueError):
    """A region policy or a region cannot be used: names the field and what to do."""


def _rgb(fill: tuple[int, int, int] | list[int], field: str) -> tuple[int, int, int]:
    fill = tuple(int(v) for v in fill)
    if len(fill) != 3 or any(not 0 <= v <= 255 for v in fill):
        raise RegionError(f"{field} must be three 0-255 values (R, G, B), got {fill!r}")
    return fill  # type: ignore[return-value]


@dataclass(frozen=True)
class CropPolicy:
    """How one SAM mask becomes an image for an embedder.

    The crop is the mask's bbox grown by ``padding`` (a fraction of the bbox's longer side on
    every side, clipped to the plate). With ``apply_mask`` the pixels outside the mask take
    ``fill``; without it the crop keeps its surroundings. Transparent plate pixels always take
    ``fill``. Masks smaller than ``min_region_area`` pixels are not embedded (counted per plate).
    """

    padding: float = 0.1
    apply_mask: bool = True
    fill: tuple[int, int, int] = (255, 255, 255)
    min_region_area: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.padding <= 2:
            raise RegionError(f"padding must be a fraction of the bbox side in [0, 2], got {self.padding}")
        if self.min_region_area < 1:
            raise RegionError(f"min_region_area must be at least 1 pixel, got {self.min_region_area}")
        object.__setattr__(self, "fill", _rgb(self.fill, "fill"))

    def tag(self) -> str:
        fill = ",".join(str(v) for v in self.fill)
        return (
            f"region=segment:bbox-pad={self.padding:g}:mask={'applied' if self.apply_mask else 'none'}:"
            f"fill={fill}:alpha=fill:min-area={self.min_region_area}:{REGIONS_VERSION}"
        )

    def box(self, bbox: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
        """The padded crop box (left, top, right, bottom) of a mask bbox XYWH, inside the plate."""
        x, y, w, h = bbox
        pad = round(self.padding * max(w, h))
        return max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)

    def crop(
        self,
        pixels: np.ndarray,
        mask: np.ndarray,
        bbox: tuple[int, int, int, int],
        opaque: np.ndarray | None = None,
    ) -> Image.Image:
        """The region image of ``mask`` (bool H×W at plate size) from ``pixels`` (uint8 H×W×3)."""
        height, width = pixels.shape[:2]
        if mask.shape != (height, width):
            raise RegionError(f"mask of shape {mask.shape} does not match the plate's {(height, width)}")
        left, top, right, bottom = self.box(bbox, width, height)
        if right <= left or bottom <= top:
            raise RegionError(f"bbox {bbox} lies outside the {width}x{height} plate")
        region = pixels[top:bottom, left:right].copy()
        keep = np.ones(region.shape[:2], dtype=bool)
        if self.apply_mask:
            keep &= mask[top:bottom, left:right]
        if opaque is not None:
            keep &= opaque[top:bottom, left:right]
        region[~keep] = self.fill
        return Image.fromarray(region)


@dataclass(frozen=True)
class Tiling:
    """A declared tiling of a plate in plate pixels: square tiles of ``tile_size`` every
    ``stride`` pixels (overlap = tile_size - stride), edges by ``edge`` (see EDGE_POLICIES)."""

    tile_size: int = 512
    stride: int = 384
    edge: EdgePolicy = "shift"
    fill: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise RegionError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if not 1 <= self.stride <= self.tile_size:
            raise RegionError(
                f"stride must be between 1 and tile_size ({self.tile_size}) so tiles cover the plate, "
                f"got {self.stride}"
            )
        if self.edge not in EDGE_POLICIES:
            raise RegionError(f"edge must be one of {', '.join(EDGE_POLICIES)}, got {self.edge!r}")
        object.__setattr__(self, "fill", _rgb(self.fill, "fill"))

    def tag(self) -> str:
        fill = ",".join(str(v) for v in self.fill)
        return (
            f"region=tile:size={self.tile_size}:stride={self.stride}:edge={self.edge}:fill={fill}:"
            f"alpha=fill:{REGIONS_VERSION}"
        )

    def _starts(self, length: int) -> list[int]:
        if length <= self.tile_size:
            return [0]
        starts = list(range(0, length - self.tile_size + 1, self.stride))
        if starts[-1] + self.tile_size < length:  # the last stride leaves an uncovered edge
            starts.append(length - self.tile_size if self.edge == "shift" else starts[-1] + self.stride)
        return starts

    def boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """Tiles as XYWH in plate pixels, row-major. Under ``pad`` a tile may extend past the
        plate; under ``shift`` it never does (a plate smaller than a tile is one smaller tile)."""
        if width < 1 or height < 1:
            raise RegionError(f"cannot tile a {width}x{height} plate")
        boxes = []
        for top in self._starts(height):
            for left in self._starts(width):
                if self.edge == "pad":
                    boxes.append((left, top, self.tile_size, self.tile_size))
                else:
                    boxes.append((left, top, min(self.tile_size, width), min(self.tile_size, height)))
        return boxes

    def crop(self, pixels: np.ndarray, box: tuple[int, int, int, int], opaque: np.ndarray | None = None) -> Image.Image:
        """The tile image of ``box`` (XYWH) from ``pixels`` (uint8 H×W×3); past the edge: fill."""
        height, width = pixels.shape[:2]
        x, y, w, h = box
        tile = np.empty((h, w, 3), dtype=np.uint8)
        tile[:] = self.fill
        inside_w, inside_h = max(0, min(w, width - x)), max(0, min(h, height - y))
        tile[:inside_h, :inside_w] = pixels[y : y + inside_h, x : x + inside_w]
        if opaque is not None:
            transparent = ~opaque[y : y + inside_h, x : x + inside_w]
            tile[:inside_h, :inside_w][transparent] = self.fill
        return Image.fromarray(tile)


def tile_ref(box: tuple[int, int, int, int]) -> str:
    """The region ref of a tile: its geometry in plate pixels, ``xywh=X,Y,W,H``."""
    return "xywh=" + ",".join(str(int(v)) for v in box)


def parse_tile_ref(ref: str) -> tuple[int, int, int, int]:
    if not ref.startswith("xywh="):
        raise RegionError(f"tile region ref {ref!r} does not start with 'xywh='")
    values = tuple(int(v) for v in ref.removeprefix("xywh=").split(","))
    if len(values) != 4:
        raise RegionError(f"tile region ref {ref!r} does not hold four integers")
    return values  # type: ignore[return-value]


def masks_tag(sam_pin_key: str, sam_preprocess_tag: str) -> str:
    """Names the mask set regions were cut from: the SAM pin and a digest of its tag."""
    digest = hashlib.sha256(sam_preprocess_tag.encode()).hexdigest()[:12]
    return f"masks={sam_pin_key}:{digest}"
