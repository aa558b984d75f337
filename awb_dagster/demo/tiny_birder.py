"""A tiny birder classifier in birder's hub layout, for tests and the offline demo.

The same network family as birder-project/rope_vit_reg4_b14_capi-places365 (birder's registered
``rope_vit_reg4_b14``: RoPE ViT, patch 14, four register tokens) with a ``config`` override that
shrinks it (2 layers, 2 heads, width 32) and a 28 x 28 input, seeded random weights and five neutral
classes, saved as birder's ``checkpoint_model`` saves a model: one ``<weights>.pt`` with ``state``,
``birder_version``, ``task``, ``signature``, ``class_to_idx``, ``rgb_stats`` and ``config``.
"""

from __future__ import annotations

import io

# The weights name (roster weight_id): birder's ``<network>_<tag>``.
DEMO_BIRDER_WEIGHTS = "rope_vit_reg4_b14_awb-demo-places"
DEMO_PLACES_LABELS = ("demo-place-a", "demo-place-b", "demo-place-c", "demo-place-d", "demo-place-e")
_TINY_CONFIG = {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
_SIZE = (28, 28)


def tiny_birder_files() -> dict[str, bytes]:
    """``{<weights>.pt: bytes}`` of the tiny RoPE ViT classifier (seed with torch.manual_seed first)."""
    import torch
    from birder.data.transforms.classification import get_rgb_stats
    from birder.model_registry import registry
    from birder.net.base import get_signature
    from birder.version import __version__

    network = DEMO_BIRDER_WEIGHTS.split("_awb-demo")[0]
    net = registry.net_factory(network, len(DEMO_PLACES_LABELS), 3, config=dict(_TINY_CONFIG), size=_SIZE)
    buffer = io.BytesIO()
    torch.save(
        {
            "state": net.state_dict(),
            "birder_version": __version__,
            "task": net.task,
            "signature": get_signature((1, 3, *_SIZE), len(DEMO_PLACES_LABELS)),
            "class_to_idx": {label: index for index, label in enumerate(DEMO_PLACES_LABELS)},
            "rgb_stats": get_rgb_stats("imagenet"),
            "config": dict(_TINY_CONFIG),
        },
        buffer,
    )
    return {f"{DEMO_BIRDER_WEIGHTS}.pt": buffer.getvalue()}
