"""The measurement protocol inside a worker: tune a searcher's grid, choose a setting, time batches and single queries."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.ann.searchers.base import Searcher
from benchmarks.ann.settings import SELECTION_RECALL, K
from recsys.evaluation.full_ranking import overlap_at_k

TUNING_REPEATS = 3
MEASURE_REPEATS = 5
SINGLE_WARMUP = 20
SINGLE_QUERIES = 200


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batched(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray, repeats: int
) -> tuple[float, float]:
    """(recall@10, queries/s): a warm-up pass gives the lists, then the median of `repeats` timed passes."""
    ids = np.asarray(search(queries), np.int64)
    seconds = median_time(lambda: search(queries), repeats)
    return overlap_at_k(ids, truth, K), len(queries) / seconds


def tune(searcher: Searcher, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    points = []
    for setting in searcher.grid:
        recall, qps = batched(searcher.at(setting), queries, truth, TUNING_REPEATS)
        points.append({**setting, "recall_at_10": recall, "qps": qps})
        described = ", ".join(f"{key}={value}" for key, value in setting.items())
        print(f"  {described}: recall@10 {recall:.4f}, {qps:,.0f} queries/s", flush=True)
    return points


def choose(points: list[dict]) -> tuple[dict, bool]:
    """The fastest point at recall@10 >= SELECTION_RECALL, else the most accurate; and whether one reached it."""
    meeting = [p for p in points if p["recall_at_10"] >= SELECTION_RECALL]
    chosen = max(meeting, key=lambda p: p["qps"]) if meeting else max(points, key=lambda p: p["recall_at_10"])
    for point in points:
        point["chosen"] = point is chosen
    return chosen, bool(meeting)


def single_query_latency(search_one: Callable[[np.ndarray], object], queries: np.ndarray) -> dict:
    for q in queries[:SINGLE_WARMUP]:
        search_one(q)
    times = []
    for q in queries[SINGLE_WARMUP : SINGLE_WARMUP + SINGLE_QUERIES]:
        start = time.perf_counter()
        search_one(q)
        times.append(time.perf_counter() - start)
    return {
        "single_query_ms": float(np.median(times) * 1e3),
        "single_query_p95_ms": float(np.percentile(times, 95) * 1e3),
        "single_queries_timed": len(times),
    }
