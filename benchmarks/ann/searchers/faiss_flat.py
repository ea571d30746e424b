"""Exact search by FAISS (IndexFlatIP: BLAS matmul in blocks + a k-heap per query), the other exact baseline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.ann.searchers.base import Searcher, load_candidates, rss_gb
from benchmarks.ann.searchers.faiss_common import add_in_chunks
from benchmarks.ann.settings import BATCH_THREADS, K

# queries handed to one index.search call; FAISS then blocks them itself (4,096 queries x 1,024 candidates
# per BLAS call by default), so its memory stays small whatever the block, unlike TF's scores matrix
FLAT_QUERY_BLOCKS = (32, 256, 1024)
# FAISS 1.15 scores a call of fewer than `distance_compute_blas_threshold` queries (default 128,000) one query at
# a time with SIMD dot products: 77 queries/s at 1M candidates here, against 375 through BLAS (sgemm + a heap per
# query), the same lists. A batch goes through BLAS from 20 queries on (FAISS's threshold before 1.8); one query
# keeps the SIMD path.
BLAS_THRESHOLD = 20


def faiss_flat_searcher(cache: Path, _args: argparse.Namespace) -> Searcher:
    """IndexFlatIP over every candidate: exact by construction; the grid is only how many queries a call gets."""
    import faiss

    faiss.omp_set_num_threads(BATCH_THREADS)
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    candidates = load_candidates(cache)
    before = rss_gb()
    start = time.perf_counter()
    index = faiss.IndexFlatIP(candidates.shape[1])
    add_in_chunks(index, candidates, "Flat")
    info = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    del candidates
    settings = {
        "index": "IndexFlatIP",
        "blas_threshold": BLAS_THRESHOLD,
        "route": "faiss index.search over query blocks, BLAS from 20 queries (batched: 2 OpenMP threads, one query: 1)",
    }

    def at(setting: dict):
        step = setting["query_block"]
        return lambda q: np.concatenate([index.search(q[i : i + step], K)[1] for i in range(0, len(q), step)])

    return Searcher(
        grid=[{"query_block": block} for block in FLAT_QUERY_BLOCKS],
        at=at,
        one_at=lambda _setting: lambda q: index.search(q[None], K)[1],
        settings=settings,
        info=info,
        single_thread=lambda: faiss.omp_set_num_threads(1),
    )
