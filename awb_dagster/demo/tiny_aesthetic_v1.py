"""A tiny aesthetics predictor V1 in the layout of shunk031/aesthetics-predictor-v1-*, for tests and the demo.

What ``AestheticsPredictorV1.push_to_hub`` writes (simple-aesthetics-predictor 0.1.2): ``config.json``
(a CLIP vision config with ``projection_dim``; architectures ``AestheticsPredictorV1``), the weights of
a ``CLIPVisionModelWithProjection`` plus ``predictor.weight``/``predictor.bias`` as ``model.safetensors``,
and the CLIP image processor's ``preprocessor_config.json``. Here: 2 layers, width 32, 32 px input,
seeded random weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def tiny_aesthetic_v1_files() -> dict[str, bytes]:
    """The repo's files (name -> bytes); seed torch first for the same bytes every time."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16, architectures=["AestheticsPredictorV1"],
    )  # fmt: skip
    state = dict(CLIPVisionModelWithProjection(config).state_dict())
    head = torch.nn.Linear(config.projection_dim, 1)
    state.update({"predictor.weight": head.weight.detach(), "predictor.bias": head.bias.detach()})
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True)
    with tempfile.TemporaryDirectory(prefix="awb-tiny-aesthetic-v1-") as tmp:
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        return {path.name: path.read_bytes() for path in sorted(Path(tmp).iterdir()) if path.is_file()}
