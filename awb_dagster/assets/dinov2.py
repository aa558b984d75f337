"""DINOv2 image embeddings (seed 3.3): the self-supervised structure axis."""

from awb_dagster.assets.embeddings import build_embedding_asset

dinov2_embeddings = build_embedding_asset(
    "dinov2",
    "DINOv2 image embeddings (CLS token after the final layernorm, pooler_output), raw and "
    "L2-normalized, one record per plate × pinned DINOv2 model.",
)
