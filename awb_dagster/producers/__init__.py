"""The families of the plate × pin engine, one producer each, and which roster families they run."""

from __future__ import annotations

from collections.abc import Iterable

from awb_dagster.constants import EMBEDDING_FAMILIES, SAM_FAMILIES, SEMANTIC_FAMILIES
from awb_dagster.engine.producer import Producer
from awb_dagster.producers.aesthetic import AestheticProducer
from awb_dagster.producers.captions import CAPTION_PRODUCERS
from awb_dagster.producers.box_masks import BOX_PROMPT_FAMILIES, DETECTOR_ASSETS, BoxMaskProducer
from awb_dagster.producers.aesthetic_image import AestheticImageProducer
from awb_dagster.producers.convnets import ConvNetProducer
from awb_dagster.producers.detections import DETECTION_PRODUCERS
from awb_dagster.producers.grounding import GroundingProducer
from awb_dagster.producers.embeddings import EMBEDDING_PRODUCERS
from awb_dagster.producers.florence_tasks import FLORENCE_TASK_PRODUCERS
from awb_dagster.producers.foreground import ForegroundProducer
from awb_dagster.producers.ocr import OcrProducer
from awb_dagster.producers.trocr_lines import TrocrProducer
from awb_dagster.producers.probes import PROBE_PRODUCERS
from awb_dagster.producers.sam import SamProducer
from awb_dagster.producers.segments import SegmentProducer
from awb_dagster.producers.semantic import SemanticProducer
from awb_dagster.producers.tiles import TileProducer
from awb_dagster.producers.zeroshot import ZEROSHOT_PRODUCERS

_SAM = SamProducer()
_SEMANTIC = SemanticProducer()
_SEGMENTS = SegmentProducer()
_SEGMENTS_OF_BOXES = SegmentProducer(upstream=("sam_masks", "box_masks"))
_TILES = TileProducer()
_OCR = OcrProducer()
_CONVNET = ConvNetProducer()
_AESTHETIC = AestheticProducer()

# Roster family -> the producer that runs its pins (SAM-HQ pins run on the SAM producer).
FAMILY_PRODUCERS: dict[str, Producer] = {
    **{producer.family: producer for producer in EMBEDDING_PRODUCERS},
    **{family: _SAM for family in SAM_FAMILIES},
    **{family: _SEMANTIC for family in SEMANTIC_FAMILIES},
    "tesseract": _OCR,
    "trocr": TrocrProducer(),
    _CONVNET.family: _CONVNET,
    **{producer.family: producer for producer in PROBE_PRODUCERS},
    **{producer.family: producer for producer in DETECTION_PRODUCERS},
    GroundingProducer.family: GroundingProducer(),
    _AESTHETIC.family: _AESTHETIC,
    **{producer.family: producer for producer in CAPTION_PRODUCERS},
    ForegroundProducer.family: ForegroundProducer(),
    AestheticImageProducer.family: AestheticImageProducer(),
}


def producers_for(families: Iterable[str]) -> list[Producer]:
    """The producers of the roster's ``families``, each once, in a stable order; region assets
    (tiles of every embedding pin, segments of every embedding × SAM pin pair) and the zero-shot
    labels of every CLIP/SigLIP pin (its own text tower) come with them; Florence-2 pins run one asset
    per text task."""
    present = set(families)
    chosen: list[Producer] = []
    for family, producer in FAMILY_PRODUCERS.items():
        if family in present and producer not in chosen:
            chosen.append(producer)
    # Box-prompted masks: each detector pin's sealed boxes through each SAM pin; segments then embed them too.
    detection_assets = tuple(asset for family, asset in DETECTOR_ASSETS.items() if family in present)
    box_masks = bool(detection_assets and present & set(BOX_PROMPT_FAMILIES))
    if box_masks:
        chosen.append(BoxMaskProducer(detection_assets))
    if present & set(EMBEDDING_FAMILIES):
        if present & set(SAM_FAMILIES):
            chosen.append(_SEGMENTS_OF_BOXES if box_masks else _SEGMENTS)
        chosen.append(_TILES)
    chosen += [producer for producer in ZEROSHOT_PRODUCERS if producer.family in present]
    chosen += [producer for producer in FLORENCE_TASK_PRODUCERS if producer.family in present]  # one asset per task
    return chosen
