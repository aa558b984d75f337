"""Tile embeddings: a declared tiling of each plate (tile size, stride, edge policy), each tile
embedded by one CLIP/SigLIP/DINOv2 pin. Partitioned by plate × embedding pin (``tile_pins``);
``region_ref`` is the tile's XYWH in plate pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from awb_dagster.constants import GROUP_REGIONS
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.regions import EDGE_POLICIES, RegionError, Tiling, tile_ref
from awb_dagster.engine.producer import StepInputs
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.plates.imaging import load_plate
from awb_dagster.producers.regions import CODE_VERSION, PlateRegions, Region, RegionSession, embedding_outcomes, region_embedder
from awb_dagster.provenance.checks import CHECK_DESCRIPTIONS, REGION_CHECK_DESCRIPTIONS, TILES_COVER_PLATE, CheckOutcome, check_tile_cover
from awb_dagster.provenance.records import tile_pair_key
from awb_dagster.provenance.store import RunStore, SealedPair

_TILING = Tiling()


@dataclass(frozen=True)
class TileSettings:
    """The declared tiling (recorded in the preprocess tag)."""

    tile_size: int = _TILING.tile_size  # plate pixels
    stride: int = _TILING.stride  # plate pixels; overlap = tile_size - stride
    edge: str = _TILING.edge  # shift | pad (see awb_dagster.instruments.regions.EDGE_POLICIES)
    fill: tuple[int, int, int] = _TILING.fill

    def tiling(self) -> Tiling:
        try:
            return Tiling(tile_size=self.tile_size, stride=self.stride, edge=self.edge, fill=tuple(self.fill))  # type: ignore[arg-type]
        except RegionError as exc:
            raise RegionError(f"tile_embeddings config: {exc}") from exc


def tile_cutter(embedder: ImageEmbedder, tiling: Tiling, max_pixels: int):
    """Plate -> its tiles, prepared for ``embedder``. Thread-safe."""

    def cut(plate: Plate) -> PlateRegions:
        image, opaque = load_plate(plate.path, plate.sha256, max_pixels=max_pixels)
        pixels = np.asarray(image)
        boxes = tiling.boxes(image.width, image.height)
        regions = [Region(tile_ref(box), embedder.prepare(tiling.crop(pixels, box, opaque))) for box in boxes]
        tag = f"{embedder.preprocess_tag};{tiling.tag()}"
        return PlateRegions(plate, tag, regions, {"tiles": len(boxes), "plate_size": f"{image.width}x{image.height}"})

    return cut


class TileProducer:
    asset_name = "tile_embeddings"
    pins_dimension = "tile_pins"
    group = GROUP_REGIONS
    description = (
        "A declared tiling of each plate (tile size, stride, edge policy), each tile embedded by one "
        "CLIP/SigLIP/DINOv2 pin: partitioned by plate × embedding pin, `scope=tile`, `region_ref` = the tile's XYWH "
        "in plate pixels."
    )
    code_version = CODE_VERSION
    settings_type = TileSettings
    check_descriptions = {**CHECK_DESCRIPTIONS, TILES_COVER_PLATE: REGION_CHECK_DESCRIPTIONS[TILES_COVER_PLATE]}
    upstream: tuple[str, ...] = ()
    license_gated = False

    def open(self, pin_key: str, settings: TileSettings, inputs: StepInputs) -> RegionSession:
        tiling = settings.tiling()
        embedder = region_embedder(inputs.instruments, pin_key)
        tag = f"{embedder.preprocess_tag};{tiling.tag()}"
        config = {"tiling": tiling.tag(), "edge_policy": EDGE_POLICIES[tiling.edge]}
        return RegionSession(
            embedder, scope="tile", store_key=tile_pair_key(pin_key), cut=tile_cutter(embedder, tiling, inputs.max_pixels),
            expected_tag=lambda plate: tag, config=config, torch_settings=inputs.torch_settings,
        )  # fmt: skip

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        sizes = {plate.sha256: (plate.height, plate.width) for plate in catalog.plates.values()}
        return {**embedding_outcomes(store, pairs, sessions), **check_tile_cover(store, pairs, sizes)}
