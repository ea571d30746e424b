"""BruteForce against the served index on held-out users (recsys.retrieval.index_comparison) and index reload checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.core.ids import NO_MOVIE
from recsys.evaluation.full_ranking import overlap_at_k, split_matrices
from recsys.retrieval import indexes
from recsys.retrieval.index_comparison import build_index_pair, compare_indexes
from recsys.retrieval.reload_checks import index_reloads_the_same
from recsys.retrieval.retrievers import IndexRetriever
from recsys.training.retrieval_training import positives

N_USERS, N_MOVIES, DIM = 40, 60, 8
SCANN = {"k": 5, "num_leaves": 6, "num_leaves_to_search": 3, "num_reordering_candidates": 30}


@pytest.fixture(scope="module")
def catalogue():
    """Movie and user vectors, and ratings 1-5 split 6/2/2 per user; users 1-5 rate every test movie 2."""
    rng = np.random.default_rng(7)
    movie_ids = (np.arange(N_MOVIES) + 1) * 10
    movie_vectors = rng.normal(size=(N_MOVIES, DIM)).astype(np.float32)
    user_vectors = {int(u): rng.normal(size=DIM).astype(np.float32) for u in range(1, N_USERS + 1)}
    rows = []
    for user in range(1, N_USERS + 1):
        watched = rng.choice(movie_ids, 10, replace=False)
        for i, (movie, split) in enumerate(zip(watched, ["train"] * 6 + ["val"] * 2 + ["test"] * 2)):
            low_test = split == "test" and user <= 5  # these users rate no test movie 4 or more
            rating = 2 if low_test else (5 if i % 2 == 0 else 3)
            rows.append((user, movie, rating, split))
    interactions = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "split"])
    return movie_ids, movie_vectors, user_vectors, interactions


@pytest.fixture(scope="module")
def pair(catalogue):
    movie_ids, movie_vectors, _, _ = catalogue
    return build_index_pair(None, movie_ids, movie_vectors, SCANN, seed=3)


def test_build_index_pair_builds_both_indexes_at_the_given_k_and_times_them(catalogue, pair):
    movie_ids, movie_vectors, user_vectors, _ = catalogue
    assert pair.k == 5 and pair.kind == "scann" and set(pair.build_s) == {"bruteforce", "scann"}
    assert all(seconds > 0 for seconds in pair.build_s.values())
    queries = np.stack([user_vectors[1], user_vectors[2]])
    _, exact_ids = pair.bruteforce(queries)
    expected = movie_ids[np.argsort(-(queries @ movie_vectors.T), axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(exact_ids.numpy(), expected)
    assert pair.served(queries)[1].shape == (2, 5)
    with pytest.raises(ValueError, match="num_leaves_to_search"):
        build_index_pair(None, movie_ids, movie_vectors, {"k": 5, "num_leaves": 6}, seed=3)


def test_compare_indexes_pairs_users_and_exclusions_with_min_rating_above_one(catalogue, pair):
    """retrieval.min_rating > 1: some test raters have no test positive; the users queried and the movies
    excluded for them come from the same rows (pairing every test rater with the positives' rows fails)."""
    movie_ids, _, user_vectors, interactions = catalogue
    kept = positives(interactions, min_rating=4)
    matrices = split_matrices(kept, np.sort(interactions["user_id"].unique()), movie_ids)
    raters = np.unique(interactions.loc[interactions["split"] == "test", "user_id"])
    with_positives = np.unique(kept.loc[kept["split"] == "test", "user_id"])
    assert len(with_positives) < len(raters)  # the case min_rating > 1 makes

    comparison = compare_indexes(pair, matrices, split="test", user_index=user_vectors, timing_batch=16)

    np.testing.assert_array_equal(comparison.users, with_positives)
    assert comparison.exact.movie_ids.shape == comparison.approx.movie_ids.shape == (len(with_positives), 5)
    for user, exact, approx in zip(comparison.users, comparison.exact.movie_ids, comparison.approx.movie_ids):
        seen = kept.loc[(kept["user_id"] == user) & (kept["split"] != "test"), "movie_id"].to_numpy()
        assert not np.isin(exact, seen).any() and not np.isin(approx, seen).any()
        assert (exact != NO_MOVIE).all() and (approx != NO_MOVIE).all()
    # the exact lists are the users' best unseen movies
    first = comparison.users[0]
    seen_first = kept.loc[(kept["user_id"] == first) & (kept["split"] != "test"), "movie_id"].to_numpy()
    scores = pd.Series(catalogue[1] @ user_vectors[int(first)], index=movie_ids).drop(seen_first)
    np.testing.assert_array_equal(comparison.exact.movie_ids[0], scores.sort_values(ascending=False).index[:5])
    # the old pairing (every test rater, the exclusions of the rows with test positives) cannot be queried
    with pytest.raises(ValueError, match="lists of movies to exclude"):
        IndexRetriever(pair.bruteforce, user_vectors).query(
            raters, 5, matrices.seen_movie_ids("test", np.flatnonzero(np.diff(matrices.test.indptr) > 0))
        )

    table = comparison.table
    assert list(table.index) == ["bruteforce", "scann"]
    assert table.loc["bruteforce", "overlap_at_5_with_bruteforce"] == 1.0
    assert table.loc["scann", "overlap_at_5_with_bruteforce"] == pytest.approx(comparison.overlap)
    assert 0 <= comparison.overlap <= 1 and 0 <= table["recall_at_5_test"].min() <= table["recall_at_5_test"].max() <= 1
    assert comparison.timing_queries.shape == (16, DIM)
    assert set(comparison.timing_metrics()) == {
        "scann_query_ms_single",
        "bruteforce_query_ms_single",
        "scann_query_ms_batch_16",
        "bruteforce_query_ms_batch_16",
        "scann_build_s",
        "scann_queries_per_s",
    }
    assert f"of {len(with_positives)} users" in comparison.describe()


def test_index_queries_are_the_ids_or_the_user_index_vectors(catalogue, pair):
    _, _, user_vectors, _ = catalogue
    np.testing.assert_array_equal(IndexRetriever(pair.bruteforce).index_queries([3, 1]), [3, 1])
    np.testing.assert_array_equal(
        IndexRetriever(pair.bruteforce, user_vectors).index_queries([3, 1]),
        np.stack([user_vectors[3], user_vectors[1]]),
    )


def test_saved_pair_reloads_the_same_and_a_different_index_does_not(catalogue, pair, tmp_path):
    movie_ids, movie_vectors, user_vectors, _ = catalogue
    queries = np.stack(list(user_vectors.values()))
    assert pair.save(tmp_path / "bruteforce", tmp_path / "scann", queries)
    assert (tmp_path / "bruteforce" / "saved_model.pb").exists()
    assert index_reloads_the_same(pair.bruteforce, tmp_path / "bruteforce", queries, k=5, more=100)  # capped
    other = indexes.build_bruteforce(None, movie_ids, -movie_vectors, 5)  # the worst movies first
    assert not index_reloads_the_same(other, tmp_path / "bruteforce", queries, k=5)


def test_scann_keeps_its_metric_keys_and_values(catalogue, pair):
    """kind scann: the keys the comparison wrote before the served index could be chosen, with the same values
    (recomputed here as they were: ScaNN with the exact fallback, its overlap with the exact lists)."""
    movie_ids, movie_vectors, user_vectors, interactions = catalogue
    matrices = split_matrices(interactions, np.sort(interactions["user_id"].unique()), movie_ids)
    comparison = compare_indexes(pair, matrices, split="test", user_index=user_vectors, timing_batch=16)
    rows = matrices.held_out_rows("test")
    users, seen = matrices.user_ids[rows], matrices.seen_movie_ids("test", rows)
    scann = indexes.build_scann(None, movie_ids, movie_vectors, 5, 6, 3, 30, seed=3)
    exact = IndexRetriever(indexes.build_bruteforce(None, movie_ids, movie_vectors, 5), user_vectors)
    approx = IndexRetriever(scann, user_vectors, fallback=exact.index).query(users, 5, seen)
    overlap = overlap_at_k(approx.movie_ids, exact.query(users, 5, seen).movie_ids, 5)
    assert comparison.quality_metrics("sequential_") == {
        "sequential_retrieval_index": "scann",
        "sequential_scann_overlap_at_100": overlap,
        "sequential_scann_overlap_at_5": overlap,
        "sequential_scann_fallback_users": approx.n_fallback,
    }
    assert list(comparison.table.index) == ["bruteforce", "scann"]
    assert comparison.describe().startswith("ScaNN top-5 overlap with BruteForce")


@pytest.mark.parametrize("kind", ["faiss_hnsw", "bruteforce"])
def test_the_chosen_index_names_its_metrics(catalogue, kind):
    movie_ids, movie_vectors, user_vectors, interactions = catalogue
    faiss = {"hnsw_m": 8, "hnsw_ef_construction": 40, "hnsw_ef_search": 60, "ivf_nlist": 6, "ivf_nprobe": 3}
    chosen = build_index_pair(None, movie_ids, movie_vectors, SCANN, seed=3, kind=kind, faiss=faiss)
    matrices = split_matrices(interactions, np.sort(interactions["user_id"].unique()), movie_ids)
    comparison = compare_indexes(chosen, matrices, split="test", user_index=user_vectors, timing_batch=16)
    quality, timing = comparison.quality_metrics(), comparison.timing_metrics()
    assert comparison.metrics() == {**quality, **timing}
    assert quality["retrieval_index"] == kind and set(quality) == {
        "retrieval_index",
        f"{kind}_overlap_at_5",
        f"{kind}_fallback_users",
    }
    names = [kind] if kind == "bruteforce" else [kind, "bruteforce"]
    assert list(comparison.table.index) == names[::-1]
    expected = {f"{name}_query_ms_{when}" for name in names for when in ("single", "batch_16")}
    assert set(timing) == expected | {f"{kind}_build_s", f"{kind}_queries_per_s"}
    if kind == "bruteforce":  # the exact index serves: its lists are the exact ones
        assert quality["bruteforce_overlap_at_5"] == 1.0 and quality["bruteforce_fallback_users"] == 0
        assert comparison.approx is comparison.exact and "exact one" in comparison.describe()
    else:  # ef_search 60 = the catalogue: exact here
        assert quality["faiss_hnsw_overlap_at_5"] == 1.0
        assert comparison.describe().startswith("FAISS HNSW top-5 overlap")
