"""What both FAISS indexes share: per-call SearchParameters, OpenMP threads, adding the candidates in chunks."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.ann.searchers.base import Searcher
from benchmarks.ann.settings import WRITE_CHUNK, K


def faiss_searcher(index, grid: list[dict], params_for: Callable, settings: dict, info: dict) -> Searcher:
    """A FAISS index searched with per-call SearchParameters: 2 OpenMP threads batched, 1 for single queries."""
    import faiss

    def at(setting: dict) -> Callable[[np.ndarray], np.ndarray]:
        params = params_for(setting)
        return lambda q: index.search(q, K, params=params)[1]

    def one_at(setting: dict) -> Callable[[np.ndarray], object]:
        search = at(setting)
        return lambda q: search(q[None])

    return Searcher(grid, at, one_at, settings, info, single_thread=lambda: faiss.omp_set_num_threads(1))


def add_in_chunks(index, candidates: np.ndarray, name: str) -> None:
    start = time.perf_counter()
    for first in range(0, len(candidates), WRITE_CHUNK):
        last = min(first + WRITE_CHUNK, len(candidates))
        index.add(candidates[first:last])
        print(f"  {name}: {last:,}/{len(candidates):,} added ({time.perf_counter() - start:.0f} s)", flush=True)
