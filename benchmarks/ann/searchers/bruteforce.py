"""Exact search by TensorFlow (matmul + top_k over a tf.constant copy): the BruteForce method and the true lists."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.ann.searchers.base import Searcher, load_candidates, rss_gb
from benchmarks.ann.settings import K

EXACT_MAX_BLOCK = 128
EXACT_SCORE_BYTES = 1.3e9  # a block's float32 scores (32 queries x 10M = 1.28 GB)


def exact_block(n: int) -> int:
    """Queries per exact-search block: a power of two up to 128 whose float32 scores fit EXACT_SCORE_BYTES."""
    block = EXACT_MAX_BLOCK
    while block > 1 and block * n * 4 > EXACT_SCORE_BYTES:
        block //= 2
    return block


def tf_searcher(cache: Path, threads: int | None) -> Searcher:
    """Exact search: TF matmul + top_k over a tf.constant copy; `threads` None keeps TF's default pools."""
    import tensorflow as tf

    if threads:  # only possible before TF initialises, hence single-query timing in a worker of its own
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    candidates = load_candidates(cache)
    before = rss_gb()
    start = time.perf_counter()
    database = tf.constant(candidates)
    build_s = time.perf_counter() - start
    block = exact_block(len(candidates))

    @tf.function(input_signature=[tf.TensorSpec([None, candidates.shape[1]], tf.float32)])
    def top_k(queries):
        return tf.math.top_k(tf.linalg.matmul(queries, database, transpose_b=True), k=K)[1]

    def at(setting: dict) -> Callable[[np.ndarray], np.ndarray]:
        step = setting["query_block"]
        return lambda q: np.concatenate([top_k(tf.constant(q[i : i + step])).numpy() for i in range(0, len(q), step)])

    return Searcher(
        grid=[{"query_block": block}],
        at=at,
        one_at=lambda _setting: lambda q: top_k(tf.constant(q[None])).numpy(),
        settings={"route": f"TF matmul + tf.math.top_k, blocks of {block} queries", "tf_threads": threads},
        info={"build_s": build_s, "index_rss_delta_gb": rss_gb() - before},
    )
