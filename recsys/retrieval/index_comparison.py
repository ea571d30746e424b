"""The exact index (BruteForce) and the served one (`retrieval.index`) over the same movie vectors, compared on
held-out users.

The served index is ScaNN, FAISS HNSW, FAISS IVF or the exact index itself (`bruteforce`). Both
are built from the same vectors and settings; every user with held-out movies of a split is
asked for their top-k unseen movies (what they had seen before the split excluded, the users and
their exclusions taken from the same rows of the split matrices), the served index's short lists
answered by the exact index; the comparison reports how far the served lists agree with the
exact ones, the Recall@k of both, and how long each index takes to build and to answer.
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
from recsys.models.configs import RETRIEVAL_INDEXES
from recsys.retrieval import faiss_indexes, indexes
from recsys.retrieval.reload_checks import index_reloads_the_same
from recsys.retrieval.retrievers import IndexLists, IndexRetriever

INDEX_KINDS = RETRIEVAL_INDEXES  # retrieval.index: the served index
SCANN_SETTINGS = ("k", "num_leaves", "num_leaves_to_search", "num_reordering_candidates")
FAISS_SETTINGS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe")
INDEX_NAMES = {"scann": "ScaNN", "faiss_hnsw": "FAISS HNSW", "faiss_ivf": "FAISS IVF", "bruteforce": "BruteForce"}


def check_index_kind(kind: str) -> str:
    """`kind` if it is one of INDEX_KINDS.

    Raises:
        ValueError: naming the kinds there are.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"retrieval.index must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
    return kind


@dataclass
class IndexPair:
    """The exact index and the served one over one set of movie vectors, their default k and build times (s).

    Attributes:
        bruteforce: the exact index.
        served: the index served (`kind`); the exact index itself when kind is "bruteforce".
        kind: one of INDEX_KINDS.
        k: the default list length of both.
        build_s: "bruteforce" and `kind` -> build time.
    """

    bruteforce: indexes.TopK
    served: Any
    kind: str
    k: int
    build_s: dict[str, float]

    def save(
        self, bruteforce_path: str | os.PathLike, served_path: str | os.PathLike, check_queries: np.ndarray
    ) -> bool:
        """Save both indexes (`indexes.save_index`), then whether the reloaded served index answers
        `check_queries` as the live one (`reload_checks.index_reloads_the_same`, at the index's k)."""
        indexes.save_index(self.bruteforce, bruteforce_path)
        indexes.save_index(self.served, served_path)
        return index_reloads_the_same(self.served, served_path, check_queries, self.k)


def _settings(group: Mapping[str, Any] | None, names: tuple[str, ...], what: str) -> Mapping[str, Any]:
    missing = [name for name in names if group is None or name not in group]
    if missing:
        raise ValueError(f"{what} settings lack {missing}; give all of {list(names)}")
    return group


def build_index_pair(
    query_model: tf.keras.Model | None,
    movie_ids: np.ndarray,
    movie_vectors: np.ndarray,
    scann: Mapping[str, Any],
    seed: int,
    kind: str = "scann",
    faiss: Mapping[str, Any] | None = None,
) -> IndexPair:
    """BruteForce and the served index (`kind`) over the same movie vectors, each timed.

    Args:
        query_model: user ids -> query vectors (`indexes.UserQueryModel`), or None to query with vectors.
        movie_ids, movie_vectors: the candidates.
        scann: the `scann` parameters: k (the default list length of both), num_leaves,
            num_leaves_to_search, num_reordering_candidates (those three for kind "scann").
        seed: seeds the served index's build (ScaNN's partitioning, HNSW's levels, IVF's k-means).
        kind: the served index, one of INDEX_KINDS (`retrieval.index`).
        faiss: the `faiss` parameters (FAISS_SETTINGS), for the FAISS kinds: hnsw_m,
            hnsw_ef_construction, hnsw_ef_search (faiss_hnsw); ivf_nlist, ivf_nprobe (faiss_ivf).

    Raises:
        ValueError: an unknown kind, or a setting it needs is missing.
    """
    check_index_kind(kind)
    _settings(scann, SCANN_SETTINGS if kind == "scann" else ("k",), "scann")
    if kind in faiss_indexes.FAISS_KINDS:
        _settings(faiss, FAISS_SETTINGS, "faiss")
    k = int(scann["k"])
    start = time.perf_counter()
    bruteforce = indexes.build_bruteforce(query_model, movie_ids, movie_vectors, k)
    build_s = {"bruteforce": time.perf_counter() - start}
    start = time.perf_counter()
    if kind == "bruteforce":
        served = bruteforce
    elif kind == "scann":
        served = indexes.build_scann(
            query_model,
            movie_ids,
            movie_vectors,
            k,
            scann["num_leaves"],
            scann["num_leaves_to_search"],
            scann["num_reordering_candidates"],
            seed=seed,
        )
    elif kind == "faiss_hnsw":
        served = faiss_indexes.build_faiss_hnsw(
            query_model,
            movie_ids,
            movie_vectors,
            k,
            m=faiss["hnsw_m"],
            ef_construction=faiss["hnsw_ef_construction"],
            ef_search=faiss["hnsw_ef_search"],
            seed=seed,
        )
    else:
        served = faiss_indexes.build_faiss_ivf(
            query_model, movie_ids, movie_vectors, k, nlist=faiss["ivf_nlist"], nprobe=faiss["ivf_nprobe"], seed=seed
        )
    if kind != "bruteforce":
        build_s[kind] = time.perf_counter() - start
    return IndexPair(bruteforce, served, kind, k, build_s)


@dataclass
class IndexComparison:
    """The served index against BruteForce on one split's users (see `compare_indexes`).

    Attributes:
        users: the users queried (those with held-out movies of the split), sorted as the matrices' rows.
        exact, approx: their top-k lists from BruteForce and from the served index (with the exact fallback).
        overlap: mean share of the exact top-k that the served index's list holds.
        k: the list length.
        table: one row per index ("bruteforce", then the served kind unless it is the exact index
            itself): query latencies, build_s, overlap with BruteForce and Recall@k.
        timing_queries: what the indexes were timed with (user ids, or query vectors).
        timing_batch: queries in the timed batch (`timing_queries` repeated if fewer).
        kind: the served index (INDEX_KINDS).
    """

    users: np.ndarray
    exact: IndexLists
    approx: IndexLists
    overlap: float
    k: int
    table: pd.DataFrame
    timing_queries: np.ndarray
    timing_batch: int
    kind: str = "scann"

    def describe(self) -> str:
        """The comparison in a sentence."""
        if self.kind == "bruteforce":
            return f"the served index is the exact one (BruteForce): top-{self.k} overlap 1, no fallback"
        return (
            f"{INDEX_NAMES[self.kind]} top-{self.k} overlap with BruteForce {self.overlap:.4f}; "
            f"{self.approx.n_fallback} of {len(self.users)} users answered by the exact fallback"
        )

    def quality_metrics(self, prefix: str = "") -> dict[str, float | int | str]:
        """What the served index is and how far its lists agree with exact search, as metric keys.

        `<prefix>retrieval_index` (the kind), `<prefix><kind>_overlap_at_<k>` (mean share of the exact
        top-k in the served list) and `<prefix><kind>_fallback_users` (users the exact index answered).
        ScaNN's overlap also keeps its historical key `<prefix>scann_overlap_at_100`, whatever k.
        """
        out = {
            f"{prefix}retrieval_index": self.kind,
            f"{prefix}{self.kind}_overlap_at_{self.k}": self.overlap,
            f"{prefix}{self.kind}_fallback_users": self.approx.n_fallback,
        }
        if self.kind == "scann":
            out[f"{prefix}scann_overlap_at_100"] = self.overlap
        return out

    def metrics(self) -> dict[str, float | int | str]:
        """Every key of the comparison: `quality_metrics` (unprefixed) and `timing_metrics`."""
        return {**self.quality_metrics(), **self.timing_metrics()}

    def timing_metrics(self) -> dict[str, float]:
        """Single-query and batch latency of both indexes, and the served index's build time and batch queries/s.

        `<name>_query_ms_single`, `<name>_query_ms_batch_<batch>` for the served kind and
        bruteforce; `<kind>_build_s`; `<kind>_queries_per_s` (the timed batch's queries per second).
        """
        batch, out = self.timing_batch, {}
        for name in dict.fromkeys((self.kind, "bruteforce")):
            out[f"{name}_query_ms_single"] = float(self.table.loc[name, "single_query_latency_ms"])
            out[f"{name}_query_ms_batch_{batch}"] = float(self.table.loc[name, "batch_latency_ms"])
        out[f"{self.kind}_build_s"] = float(self.table.loc[self.kind, "build_s"])
        out[f"{self.kind}_queries_per_s"] = float(self.table.loc[self.kind, "batch_queries_per_s"])
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
    held-out movies (e.g. `retrieval.min_rating`). When the served index is the exact one
    (kind "bruteforce"), its lists are the exact lists (overlap 1) and it is timed once.

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
    if pair.kind == "bruteforce":
        approx, overlap = exact, 1.0
    else:
        approx = IndexRetriever(pair.served, user_index, fallback=pair.bruteforce).query(users, k, seen)
        overlap = full_ranking.overlap_at_k(approx.movie_ids, exact.movie_ids, k)
    timing_queries = exact_retriever.index_queries(users[:timing_batch])
    timed = dict.fromkeys(("bruteforce", pair.kind))
    table = pd.DataFrame(
        {
            name: indexes.time_queries(
                pair.bruteforce if name == "bruteforce" else pair.served, timing_queries, batch=timing_batch
            )
            for name in timed
        }
    ).T
    lists = {"bruteforce": (1.0, exact), pair.kind: (overlap, approx)}
    table["build_s"] = [pair.build_s[name] for name in timed]
    table[f"overlap_at_{k}_with_bruteforce"] = [lists[name][0] for name in timed]
    held_out = matrices.relevant(split)[rows]
    table[f"recall_at_{k}_{split}"] = [
        metrics.retrieval_metrics(
            full_ranking.catalogue_columns(matrices.movie_ids, lists[name][1].movie_ids), held_out, (k,)
        )[f"recall_at_{k}"]
        for name in timed
    ]
    return IndexComparison(users, exact, approx, overlap, k, table, timing_queries, timing_batch, pair.kind)
