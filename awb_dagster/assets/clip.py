"""CLIP image embeddings (seed 3.1): the semantic-alignment axis."""

from awb_dagster.assets.embeddings import build_embedding_asset

clip_embeddings = build_embedding_asset(
    "clip",
    "CLIP image embeddings (projected image_embeds), raw and L2-normalized, one record per "
    "plate × pinned CLIP model. Preprocessing follows the model's own image processor config.",
)
