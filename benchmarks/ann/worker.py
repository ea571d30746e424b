"""One method in a process of its own (`python -m benchmarks.ann --worker <name>`): build, tune, measure, record.

Only the searcher the worker runs imports its library (inside the function that builds it), so a FAISS
worker never loads TensorFlow; recsys, imported by the modules below, sets up TensorFlow's environment first.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.ann.datasets import save_npy
from benchmarks.ann.protocol import MEASURE_REPEATS, batched, choose, single_query_latency, tune
from benchmarks.ann.searchers.base import Searcher
from benchmarks.ann.searchers.bruteforce import tf_searcher
from benchmarks.ann.searchers.faiss_flat import faiss_flat_searcher
from benchmarks.ann.searchers.faiss_hnsw import faiss_hnsw_searcher
from benchmarks.ann.searchers.faiss_ivfpq import faiss_ivfpq_searcher
from benchmarks.ann.searchers.scann_index import scann_searcher
from benchmarks.ann.settings import BATCH_THREADS, QUERY_SETS, SELECTION_RECALL
from recsys.core.io import write_json

SEARCHERS: dict[str, Callable[[Path, argparse.Namespace], Searcher]] = {
    "bruteforce": lambda cache, _args: tf_searcher(cache, BATCH_THREADS),
    "bruteforce_single": lambda cache, _args: tf_searcher(cache, 1),
    "faiss_flat": faiss_flat_searcher,
    "scann": scann_searcher,
    "faiss_hnsw": faiss_hnsw_searcher,
    "faiss_ivfpq": faiss_ivfpq_searcher,
}


def benchmark(name: str, cache: Path, args: argparse.Namespace) -> dict:
    """Build one method's index, tune it on the tuning queries, measure it on the measured ones."""
    queries = {s: np.load(cache / f"{s}_queries.npy") for s in QUERY_SETS}
    truth = {s: np.load(cache / f"truth_{s}.npy") for s in QUERY_SETS}
    searcher = SEARCHERS[name](cache, args)
    cached = " (cached index: its original build)" if searcher.info.get("build_cached") else ""
    print(f"{name}: build {searcher.info['build_s']:.1f} s{cached}", flush=True)
    if name == "bruteforce_single":
        return single_query_latency(searcher.one_at(searcher.grid[0]), queries["measured"])
    points = tune(searcher, queries["tuning"], truth["tuning"])
    chosen, met = choose(points)
    if not met:
        print(
            f"{name}: no setting reached recall@10 {SELECTION_RECALL} on the tuning queries: the most accurate is used"
        )
    setting = {key: chosen[key] for key in searcher.grid[0]}
    recall, qps = batched(searcher.at(setting), queries["measured"], truth["measured"], MEASURE_REPEATS)
    result = {**searcher.info, "settings": {**searcher.settings, **setting}, "tuning": points}
    result |= {"tuning_target_met": met, "recall_at_10": recall, "qps": qps}
    if name != "bruteforce":  # its single queries need TF started on one thread: worker bruteforce_single
        searcher.single_thread()
        result |= single_query_latency(searcher.one_at(setting), queries["measured"])
    return result


def ground_truth(cache: Path) -> dict:
    """The exact top 10 of every tuning and measured query, by TF (its default thread pools), into the cache."""
    searcher = tf_searcher(cache, None)
    search = searcher.at(searcher.grid[0])
    start = time.perf_counter()
    for name in QUERY_SETS:
        save_npy(cache / f"truth_{name}.npy", search(np.load(cache / f"{name}_queries.npy")).astype(np.int64))
    return {"route": searcher.settings["route"], "search_s": time.perf_counter() - start}


def run_worker(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load = os.getloadavg()[0]
    if args.worker == "exact":
        result = ground_truth(args.cache_dir)
    else:
        result = benchmark(args.worker, args.cache_dir, args)
    result |= {
        "load_average_at_start": load,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # Linux: KiB
        "worker_wall_s": time.perf_counter() - started,
    }
    write_json(args.cache_dir / f"{args.worker}.json", result)
    return 0
