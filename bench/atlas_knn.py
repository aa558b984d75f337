"""Time the atlas computations at segment scale: exact blocked kNN, linear CKA, the 2-D map
and the consensus prefixes, on random L2 vectors. Prints one JSON line per measurement.

    .venv/bin/python bench/atlas_knn.py --n 50000 --dim 1024 --pins 3
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from awb_dagster.atlas.compare import linear_cka
from awb_dagster.atlas.knn import consensus_prefix_knn, knn_cosine
from awb_dagster.atlas.maps import pca_map


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--pins", type=int, default=3, help="spaces for the consensus prefixes (0: skip)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spaces = []
    for _ in range(max(1, args.pins)):
        x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        spaces.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    common = {"n": args.n, "dim": args.dim, "k": args.k, "torch_threads": torch.get_num_threads()}

    def report(what: str, started: float) -> None:
        print(json.dumps({"what": what, **common, "seconds": round(time.perf_counter() - started, 2),
                          "peak_rss_gib": round(_peak_rss_gib(), 2)}), flush=True)

    started = time.perf_counter()
    knn_cosine(spaces[0], args.k)
    report("knn_cosine (exact, one pin)", started)
    started = time.perf_counter()
    pca_map(spaces[0])
    report("pca_map", started)
    if args.pins >= 2:
        started = time.perf_counter()
        linear_cka(spaces[0], spaces[1])
        report("linear_cka (one pair)", started)
        started = time.perf_counter()
        consensus_prefix_knn(spaces, args.k)
        report(f"consensus_prefix_knn ({args.pins} pins)", started)


if __name__ == "__main__":
    main()
