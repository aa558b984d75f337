"""Names defined once: groups, pools, tags, families."""

EMBEDDING_FAMILIES = ("clip", "siglip", "dinov2")
SEGMENTATION_FAMILIES = ("sam",)
# Registry families the SAM adapter runs: their pins share the sam pins partition (sam_masks).
SAM_FAMILIES = ("sam", "sam-hq")
GROUP_PLATES = "plates"
GROUP_EMBEDDINGS = "embeddings"
GROUP_SEGMENTATION = "segmentation"
GPU_POOL = "gpu"
PLATE_DIMENSION = "plate"
PIN_DIMENSION = "pin"
PLATES_PARTITIONS_NAME = "plates"
PLATE_FILES_KEY = "plate_files"  # observable source: one partition per plate, data version = sha256
GROUP_PINS = "pins"
GROUP_ATLAS = "atlas"
GROUP_REGIONS = "regions"
