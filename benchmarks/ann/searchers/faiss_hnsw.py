"""FAISS HNSW (IndexHNSWFlat, inner product), its slow build cached in the data set's folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.ann.searchers.base import Searcher, load_candidates, rss_gb
from benchmarks.ann.searchers.faiss_common import add_in_chunks, faiss_searcher
from benchmarks.ann.settings import BATCH_THREADS
from recsys.core.io import atomic_path, write_json

HNSW_EF_SEARCH_GRID = (16, 32, 64, 128, 256, 512, 1024, 2048)


def hnsw_path(cache: Path, m: int, ef_construction: int) -> Path:
    return cache / f"faiss_hnsw_M{m}_efC{ef_construction}.index"


def build_hnsw(cache: Path, m: int, ef_construction: int):
    """Build the HNSW index and cache it with its build time; (index, build record)."""
    import faiss

    candidates = load_candidates(cache)
    before = rss_gb()
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(candidates.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    add_in_chunks(index, candidates, "HNSW")
    record = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    path = hnsw_path(cache, m, ef_construction)
    with atomic_path(path, suffix=".index") as tmp:
        faiss.write_index(index, str(tmp))
    write_json(path.with_suffix(".json"), {**record, "n": len(candidates), "faiss_version": faiss.__version__})
    return index, record


def faiss_hnsw_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import faiss

    faiss.omp_set_num_threads(BATCH_THREADS)
    path = hnsw_path(cache, args.hnsw_m, args.hnsw_ef_construction)
    cached = path.exists() and path.with_suffix(".json").exists()
    if cached:  # the original build time, and what loading the index adds to the RSS
        before = rss_gb()
        start = time.perf_counter()
        index = faiss.read_index(str(path))
        load_s = time.perf_counter() - start
        build_s = json.loads(path.with_suffix(".json").read_text())["build_s"]
        info = {"build_s": build_s, "index_load_s": load_s, "index_rss_delta_gb": rss_gb() - before}
    else:
        index, info = build_hnsw(cache, args.hnsw_m, args.hnsw_ef_construction)
    info |= {"build_cached": cached, "index_file_gb": path.stat().st_size / 1e9}
    settings = {
        "index": "IndexHNSWFlat, METRIC_INNER_PRODUCT",
        "M": args.hnsw_m,
        "ef_construction": args.hnsw_ef_construction,
        "build_threads": BATCH_THREADS,
        "route": "faiss index.search, SearchParametersHNSW (batched: 2 OpenMP threads, one query: 1)",
    }
    grid = [{"ef_search": ef} for ef in HNSW_EF_SEARCH_GRID]
    return faiss_searcher(index, grid, lambda s: faiss.SearchParametersHNSW(efSearch=s["ef_search"]), settings, info)
