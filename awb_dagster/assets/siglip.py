"""SigLIP image embeddings (seed 3.2): a CLIP-like axis with a different training recipe."""

from awb_dagster.assets.embeddings import build_embedding_asset

siglip_embeddings = build_embedding_asset(
    "siglip",
    "SigLIP image embeddings (vision tower pooler_output), raw and L2-normalized, one record "
    "per plate × pinned SigLIP model.",
)
