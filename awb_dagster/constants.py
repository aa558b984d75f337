"""Names defined once: groups, pools, tags, families."""

EMBEDDING_FAMILIES = ("clip", "siglip", "dinov2", "aimv2", "biomedclip")
SEGMENTATION_FAMILIES = ("sam",)
# Registry families the SAM adapter runs: their pins share the sam pins partition (sam_masks).
SAM_FAMILIES = ("sam", "sam-hq")
# Semantic segmentation (class maps with label names): kept apart from the class-agnostic masks.
SEMANTIC_FAMILIES = ("mask2former",)
# Text from plates (OCR): the Tesseract engine installed here, pinned by version + traineddata sha256.
OCR_FAMILIES = ("tesseract", "trocr")
GROUP_TEXT = "text"
# Captioners and VLMs (seed 10.2): one caption per plate × pin with a registry prompt and declared decoding.
CAPTION_FAMILIES = ("blip", "blip2", "florence2", "qwen2-vl")
# ConvNet texture baselines (torchvision weights pinned by file): pooled features join the atlas.
TEXTURE_FAMILIES = ("convnet",)
# Classifier probes (seed 7.3, 7.4, 7.5): logits with label names, measured axes, never authority.
PROBE_FAMILIES = ("wikiart", "emotion", "places365")
GROUP_PROBES = "probes"
# Scalar probes (seed 7.1): fed by sealed CLIP embedding records (the improved aesthetic predictor's
# MLP), or by the plate's pixels (the aesthetics predictor V1: its own CLIP tower and head).
SCORE_FAMILIES = ("aesthetic", "aesthetic-image")
SCORE_ASSETS = {"aesthetic": "aesthetic_scores", "aesthetic-image": "aesthetic_image_scores"}
# Object detection (seed 6): boxes with labels and scores, per box records; a weak signal.
DETECTION_FAMILIES = ("detr",)
# Text-conditioned detection (seed 6: GroundingDINO): boxes for the phrases of a registry prompt.
GROUNDING_FAMILIES = ("grounding-dino",)
# Foreground priors (seed 5.4: U^2-Net): one figure-vs-paper mask per plate, never semantics.
FOREGROUND_FAMILIES = ("u2net",)
# Every family with a plate × pin asset of its own (one ``<family>_pins`` partition each): `awb run --family`.
PIN_FAMILIES = (
    *EMBEDDING_FAMILIES, *SEGMENTATION_FAMILIES, *SEMANTIC_FAMILIES, *OCR_FAMILIES, *TEXTURE_FAMILIES, *PROBE_FAMILIES,
    *DETECTION_FAMILIES, *GROUNDING_FAMILIES, *SCORE_FAMILIES, *CAPTION_FAMILIES, *FOREGROUND_FAMILIES,
)  # fmt: skip
GROUP_DETECTION = "detection"
GROUP_PLATES = "plates"
GROUP_EMBEDDINGS = "embeddings"
GROUP_SEGMENTATION = "segmentation"
GROUP_SEMANTIC = "semantic"
GPU_POOL = "gpu"
PLATE_DIMENSION = "plate"
PIN_DIMENSION = "pin"
PLATES_PARTITIONS_NAME = "plates"
PLATE_FILES_KEY = "plate_files"  # observable source: one partition per plate, data version = sha256
GROUP_PINS = "pins"
GROUP_ATLAS = "atlas"
GROUP_REGIONS = "regions"
