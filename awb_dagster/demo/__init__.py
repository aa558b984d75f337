"""Offline demo and test support: a loopback Hugging Face Hub and tiny real-architecture checkpoints."""

from awb_dagster.demo.checkpoints import DEMO_REPOS, build_tiny_repo, publish_demo_repos
from awb_dagster.demo.hub import DEMO_TOKEN, LoopbackHub, use_hub_endpoint

__all__ = [
    "DEMO_REPOS",
    "DEMO_TOKEN",
    "LoopbackHub",
    "build_tiny_repo",
    "publish_demo_repos",
    "use_hub_endpoint",
]
