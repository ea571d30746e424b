"""FAISS IVF-PQ: an HNSW-assigned inverted file, 4-bit fast-scan codes, exact re-scoring (RFlat)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.ann.searchers.base import Searcher, load_candidates, rss_gb
from benchmarks.ann.searchers.faiss_common import add_in_chunks, faiss_searcher
from benchmarks.ann.settings import BATCH_THREADS

IVF_POINTS_PER_LIST = 39  # FAISS's min_points_per_centroid: fewer training points draw its warning
IVF_MIN_TRAINING = 100_000
IVF_KMEANS_ITERATIONS = 12  # as ScaNN's tree
IVF_COARSE_HNSW_M = 32
IVF_COARSE_EF_SEARCH = 64
IVF_NPROBE_GRID = (32, 64, 128, 256, 512, 1024, 2048, 4096)
IVF_K_FACTOR_GRID = (16, 64, 256, 1024)


def ivf_lists(n: int) -> int:
    """The power of two nearest 4 sqrt(n), halved until every list has IVF_POINTS_PER_LIST training points."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    while nlist > 1 and nlist * IVF_POINTS_PER_LIST > n:
        nlist //= 2
    return nlist


def ivfpq_params(setting: dict):
    import faiss

    nprobe = setting["nprobe"]
    coarse = faiss.SearchParametersHNSW(efSearch=max(IVF_COARSE_EF_SEARCH, 2 * nprobe))
    lists = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=coarse)
    return faiss.IndexRefineSearchParameters(k_factor=float(setting["k_factor"]), base_index_params=lists)


def faiss_ivfpq_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import faiss

    faiss.omp_set_num_threads(BATCH_THREADS)
    candidates = load_candidates(cache)
    n, dim = candidates.shape
    nlist = ivf_lists(n)
    factory = f"IVF{nlist}_HNSW{IVF_COARSE_HNSW_M},PQ{dim}x4fs,RFlat"
    training_size = min(n, max(IVF_POINTS_PER_LIST * nlist, IVF_MIN_TRAINING))
    before = rss_gb()
    start = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    lists = faiss.extract_index_ivf(index)
    lists.cp.niter = IVF_KMEANS_ITERATIONS
    sample = np.random.default_rng(args.seed).choice(n, training_size, replace=False)
    index.train(candidates[np.sort(sample)])
    faiss.downcast_index(lists.quantizer).hnsw.efSearch = IVF_COARSE_EF_SEARCH  # for assigning the candidates
    add_in_chunks(index, candidates, "IVF-PQ")
    info = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    settings = {
        "factory": factory,
        "metric": "inner_product",
        "nlist": nlist,
        "training_sample_size": training_size,
        "kmeans_iterations": IVF_KMEANS_ITERATIONS,
        "coarse_ef_search": f"max({IVF_COARSE_EF_SEARCH}, 2 nprobe)",
        "route": "faiss index.search, IndexRefineSearchParameters(SearchParametersIVF) "
        "(batched: 2 OpenMP threads, one query: 1)",
    }
    nprobes = sorted({min(p, nlist) for p in IVF_NPROBE_GRID})
    grid = [{"nprobe": p, "k_factor": f} for p in nprobes for f in IVF_K_FACTOR_GRID]
    return faiss_searcher(index, grid, ivfpq_params, settings, info)
