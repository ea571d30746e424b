"""ScaNN through its C++ searcher (scann_ops_pybind): a partition tree, anisotropic hashing, exact re-scoring."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.ann.searchers.base import Searcher, load_candidates, rss_gb
from benchmarks.ann.settings import BATCH_THREADS, K

SCANN_TRAINING_SAMPLE = 500_000
SCANN_DIMS_PER_BLOCK = 2
SCANN_ANISOTROPIC_THRESHOLD = 0.2
SCANN_LEAVES_FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08)
SCANN_REORDER_GRID = (250, 1000, 2500, 5000, 10000, 20000)


def scann_leaves_grid(num_leaves: int) -> list[int]:
    return sorted({min(num_leaves, max(1, round(f * num_leaves))) for f in SCANN_LEAVES_FRACTIONS})


def scann_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import scann  # its package also imports TF (recsys came first)

    candidates = load_candidates(cache)
    n = len(candidates)
    num_leaves = round(2 * math.sqrt(n))
    reorders = sorted({min(r, n) for r in SCANN_REORDER_GRID})
    grid = [{"leaves_to_search": leaves, "reorder": r} for leaves in scann_leaves_grid(num_leaves) for r in reorders]
    settings = {
        "num_leaves": num_leaves,
        "training_sample_size": min(n, SCANN_TRAINING_SAMPLE),
        "quantisation": f"asymmetric hashing, {SCANN_DIMS_PER_BLOCK} dims per block, lut16",
        "anisotropic_quantization_threshold": SCANN_ANISOTROPIC_THRESHOLD,
        "reordering_num_neighbors_built": reorders[-1],
        "distance": "dot_product",
        "training_threads": BATCH_THREADS,
        "route": "scann.scann_ops_pybind: search_batched_parallel (batched, 2 threads), search (one query)",
    }
    before = rss_gb()
    start = time.perf_counter()
    searcher = (
        scann.scann_ops_pybind.builder(candidates, K, "dot_product")
        .tree(
            num_leaves=num_leaves,
            num_leaves_to_search=grid[0]["leaves_to_search"],
            training_sample_size=settings["training_sample_size"],
        )
        .score_ah(SCANN_DIMS_PER_BLOCK, anisotropic_quantization_threshold=SCANN_ANISOTROPIC_THRESHOLD)
        .reorder(reorders[-1])
        .set_n_training_threads(BATCH_THREADS)
        .build()
    )
    info = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    searcher.set_num_threads(BATCH_THREADS)

    def at(s: dict) -> Callable[[np.ndarray], np.ndarray]:
        return lambda q: searcher.search_batched_parallel(
            q, final_num_neighbors=K, pre_reorder_num_neighbors=s["reorder"], leaves_to_search=s["leaves_to_search"]
        )[0]

    def one_at(s: dict) -> Callable[[np.ndarray], object]:
        return lambda q: searcher.search(
            q, final_num_neighbors=K, pre_reorder_num_neighbors=s["reorder"], leaves_to_search=s["leaves_to_search"]
        )

    return Searcher(grid, at, one_at, settings, info)
