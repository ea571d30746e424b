"""An exact (BruteForce) and an approximate (ScaNN) index over the same movie vectors, compared on held-out users.

Both indexes are built from the same vectors and settings; every user with held-out movies of a
split is asked for their top-k unseen movies (what they had seen before the split excluded, the
users and their exclusions taken from the same rows of the split matrices), ScaNN's short lists
answered by the exact index; the comparison reports how far ScaNN's lists agree with the exact
ones, the Recall@k of both, and how long each index takes to build and to answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.evaluation import full_ranking, metrics
from recsys.evaluation.full_ranking import SplitMatrices
from recsys.retrieval import indexes
from recsys.retrieval.reload_checks import index_reloads_the_same
from recsys.retrieval.retrievers import IndexLists, IndexRetriever

SCANN_SETTINGS = ("k", "num_leaves", "num_leaves_to_search", "num_reordering_candidates")


@dataclass
class IndexPair:
    """The exact and the approximate index over one set of movie vectors, their default k and build times (s)."""

    bruteforce: indexes.TopK
    scann: indexes.TopK
    k: int
    build_s: dict[str, float]

    def save(
        self, bruteforce_path: str | os.PathLike, scann_path: str | os.PathLike, check_queries: np.ndarray
    ) -> bool:
        """Save both indexes (`indexes.save_index`), then whether the reloaded ScaNN answers `check_queries`
        as the live one (`reload_checks.index_reloads_the_same`, at the index's k)."""
        indexes.save_index(self.bruteforce, bruteforce_path)
        indexes.save_index(self.scann, scann_path)
        return index_reloads_the_same(self.scann, scann_path, check_queries, self.k)


def build_index_pair(
    query_model: tf.keras.Model | None,
    movie_ids: np.ndarray,
    movie_vectors: np.ndarray,
    scann: Mapping[str, Any],
    seed: int,
) -> IndexPair:
    """BruteForce and ScaNN over the same movie vectors, each timed.

    Args:
        query_model: user ids -> query vectors (`indexes.UserQueryModel`), or None to query with vectors.
        movie_ids, movie_vectors: the candidates.
        scann: the `scann` parameters: k (the default list length of both), num_leaves,
            num_leaves_to_search, num_reordering_candidates.
        seed: seeds ScaNN's partitioning (the same seed, the same index).

    Raises:
        ValueError: a ScaNN setting is missing.
    """
    missing = [name for name in SCANN_SETTINGS if name not in scann]
    if missing:
        raise ValueError(f"scann settings lack {missing}; give all of {list(SCANN_SETTINGS)}")
    start = time.perf_counter()
    bruteforce = indexes.build_bruteforce(query_model, movie_ids, movie_vectors, scann["k"])
    bruteforce_s = time.perf_counter() - start
    start = time.perf_counter()
    approximate = indexes.build_scann(
        query_model,
        movie_ids,
        movie_vectors,
        scann["k"],
        scann["num_leaves"],
        scann["num_leaves_to_search"],
        scann["num_reordering_candidates"],
        seed=seed,
    )
    build_s = {"bruteforce": bruteforce_s, "scann": time.perf_counter() - start}
    return IndexPair(bruteforce, approximate, int(scann["k"]), build_s)


@dataclass
class IndexComparison:
    """ScaNN against BruteForce on one split's users (see `compare_indexes`).

    Attributes:
        users: the users queried (those with held-out movies of the split), sorted as the matrices' rows.
        exact, approx: their top-k lists from BruteForce and from ScaNN (with the exact fallback).
        overlap: mean share of the exact top-k that ScaNN's list holds.
        k: the list length.
        table: one row per index: query latencies, build_s, overlap with BruteForce and Recall@k.
        timing_queries: what the indexes were timed with (user ids, or query vectors).
        timing_batch: queries in the timed batch (`timing_queries` repeated if fewer).
    """

    users: np.ndarray
    exact: IndexLists
    approx: IndexLists
    overlap: float
    k: int
    table: pd.DataFrame
    timing_queries: np.ndarray
    timing_batch: int

    def describe(self) -> str:
        """The comparison in a sentence."""
        return (
            f"ScaNN top-{self.k} overlap with BruteForce {self.overlap:.4f}; {self.approx.n_fallback} of "
            f"{len(self.users)} users answered by the exact fallback"
        )

    def quality_metrics(self, prefix: str = "") -> dict[str, float | int]:
        """`<prefix>scann_overlap_at_100` (ScaNN's overlap with exact search; the key keeps its name whatever k)
        and `<prefix>scann_fallback_users` (users the exact index answered)."""
        return {f"{prefix}scann_overlap_at_100": self.overlap, f"{prefix}scann_fallback_users": self.approx.n_fallback}

    def timing_metrics(self) -> dict[str, float]:
        """Single-query and batch latency of both indexes and ScaNN's build time, as metric keys."""
        batch, out = self.timing_batch, {}
        for name in ("scann", "bruteforce"):
            out[f"{name}_query_ms_single"] = float(self.table.loc[name, "single_query_latency_ms"])
            out[f"{name}_query_ms_batch_{batch}"] = float(self.table.loc[name, "batch_latency_ms"])
        out["scann_build_s"] = float(self.table.loc["scann", "build_s"])
        return out


def compare_indexes(
    pair: IndexPair,
    matrices: SplitMatrices,
    k: int | None = None,
    split: str = "test",
    user_index: Any = None,
    timing_batch: int = 1024,
) -> IndexComparison:
    """Query both indexes for every user with held-out movies of `split`, their seen movies excluded.

    The users and the movies each must not be offered (train for val; train and val for test)
    come from the same rows of `matrices`, so they always pair up, whatever made a user's
    held-out movies (e.g. `retrieval.min_rating`).

    Args:
        pair: the indexes (`build_index_pair`).
        matrices: the split matrices; their columns are the catalogue the indexes hold.
        k: list length (by default the indexes' k).
        split: "val" or "test".
        user_index: user id -> the index's query, as `IndexRetriever` takes it (None: the user id).
        timing_batch: the size of the timed batch, made of the first users' queries (`indexes.time_queries`).
    """
    k = pair.k if k is None else k
    rows = matrices.held_out_rows(split)
    users = matrices.user_ids[rows]
    seen = matrices.seen_movie_ids(split, rows)
    exact_retriever = IndexRetriever(pair.bruteforce, user_index)
    exact = exact_retriever.query(users, k, seen)
    approx = IndexRetriever(pair.scann, user_index, fallback=pair.bruteforce).query(users, k, seen)
    overlap = full_ranking.overlap_at_k(approx.movie_ids, exact.movie_ids, k)
    timing_queries = exact_retriever.index_queries(users[:timing_batch])
    table = pd.DataFrame(
        {
            name: indexes.time_queries(index, timing_queries, batch=timing_batch)
            for name, index in (("bruteforce", pair.bruteforce), ("scann", pair.scann))
        }
    ).T
    table["build_s"] = [pair.build_s["bruteforce"], pair.build_s["scann"]]
    table[f"overlap_at_{k}_with_bruteforce"] = [1.0, overlap]
    held_out = matrices.relevant(split)[rows]
    table[f"recall_at_{k}_{split}"] = [
        metrics.retrieval_metrics(full_ranking.catalogue_columns(matrices.movie_ids, lists.movie_ids), held_out, (k,))[
            f"recall_at_{k}"
        ]
        for lists in (exact, approx)
    ]
    return IndexComparison(users, exact, approx, overlap, k, table, timing_queries, timing_batch)
