"""Hand-checked cases for every metric in recsys.evaluation.metrics."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.rating_scale import RatingScale
from recsys.evaluation import metrics


def csr(dense):
    return sp.csr_matrix(np.asarray(dense, dtype=np.float32))


# ---- rating metrics ---------------------------------------------------------------------------


WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)


def test_rmse_and_mae_by_hand():
    assert metrics.rmse([1, 2, 3], [1, 2, 5], WHOLE_STARS) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.mae([1, 2, 3], [1, 2, 5], WHOLE_STARS) == pytest.approx(2 / 3)


def test_predictions_are_clipped_to_the_rating_scale():
    # 6 -> 5 and -1 -> 1: both become perfect once clipped
    assert metrics.rmse([5, 1], [6.0, -1.0], WHOLE_STARS) == 0.0
    assert metrics.mae([5, 1], [6.0, -1.0], WHOLE_STARS) == 0.0
    # 5.5 -> 5 against a true 4: error 1, while 0.0 -> 1 against a true 2: error 1
    assert metrics.rmse([4, 2], [5.5, 0.0], WHOLE_STARS) == pytest.approx(1.0)
    assert metrics.rmse([5, 1], [6.0, -1.0], clip=None) == pytest.approx(math.sqrt((1 + 4) / 2))
    # on a half-star scale a prediction of 0.7 against a true 0.5 is not clipped up to 1
    assert metrics.mae([0.5], [0.7], HALF_STARS) == pytest.approx(0.2)
    assert metrics.mae([0.5], [0.2], HALF_STARS) == 0.0


def test_rating_scale_levels_and_checks():
    np.testing.assert_allclose(HALF_STARS.levels(), np.arange(1, 11) / 2)
    np.testing.assert_allclose(WHOLE_STARS.levels(), [1, 2, 3, 4, 5])
    assert RatingScale.from_dict(HALF_STARS.to_dict()) == HALF_STARS
    with pytest.raises(ValueError, match="whole steps"):
        RatingScale(1.0, 5.0, 0.3)
    with pytest.raises(ValueError, match="low < high"):
        RatingScale(5.0, 1.0, 1.0)


def test_rating_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="y_true has 2"):
        metrics.rmse([1, 2], [1, 2, 3], WHOLE_STARS)
    with pytest.raises(ValueError, match="empty"):
        metrics.mae([], [], WHOLE_STARS)
    with pytest.raises(ValueError, match="NaN"):
        metrics.rmse([1, 2], [1, np.nan], WHOLE_STARS)


# ---- interaction matrix and ranking -------------------------------------------------------------


def test_build_interaction_matrix_is_binary_and_shaped_by_catalogue():
    matrix = metrics.build_interaction_matrix([0, 0, 2, 0], [1, 1, 3, 0], n_users=4, n_items=5)
    assert matrix.shape == (4, 5) and matrix.dtype == np.float32
    expected = np.zeros((4, 5))
    expected[0, 1] = expected[2, 3] = expected[0, 0] = 1.0  # the repeated (0, 1) collapses to 1
    np.testing.assert_array_equal(matrix.toarray(), expected)
    with pytest.raises(ValueError, match="item_idx must lie in"):
        metrics.build_interaction_matrix([0], [5], n_users=1, n_items=5)


def test_top_k_orders_best_first_and_breaks_ties_by_item_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [1.0, 1.0, 1.0, 1.0, 0.0]])
    original = scores.copy()
    top = metrics.top_k_from_scores(scores, k=3)
    np.testing.assert_array_equal(top, [[1, 3, 2], [0, 1, 2]])
    np.testing.assert_array_equal(scores, original)  # the caller's scores are untouched


def test_top_k_never_recommends_excluded_items():
    scores = np.array([[0.1, 0.9, 0.5, 0.8, 0.2], [0.5, 0.4, 0.3, 0.2, 0.1]])
    seen = csr([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
    top = metrics.top_k_from_scores(scores, k=2, exclude=seen)
    np.testing.assert_array_equal(top, [[2, 4], [1, 2]])
    # With fewer than k unseen items left, the seen ones fill the tail, still deterministically.
    everything_seen_but_one = csr([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]])
    top = metrics.top_k_from_scores(scores, k=3, exclude=everything_seen_but_one)
    np.testing.assert_array_equal(top[:, 0], [2, 0])
    np.testing.assert_array_equal(top[0, 1:], [0, 1])  # the -inf ties, by item index


def test_top_k_matches_a_full_stable_sort_on_random_and_tied_scores():
    rng = np.random.default_rng(0)
    real_scores = rng.normal(size=(50, 300))
    count_scores = rng.integers(0, 4, size=(50, 300)).astype(float)  # heavy ties at every boundary
    seen = sp.random(50, 300, density=0.1, random_state=1, format="csr")
    for scores in (real_scores, count_scores):
        top = metrics.top_k_from_scores(scores, k=20, exclude=seen)
        masked = -scores.copy()
        masked[seen.toarray() != 0] = np.inf
        np.testing.assert_array_equal(top, np.argsort(masked, axis=1, kind="stable")[:, :20])


def test_top_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k=6"):
        metrics.top_k_from_scores(np.zeros((2, 5)), k=6)
    with pytest.raises(ValueError, match="NaN"):
        metrics.top_k_from_scores(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(ValueError, match="shape"):
        metrics.top_k_from_scores(np.zeros((2, 5)), k=1, exclude=csr(np.zeros((2, 4))))


# ---- retrieval metrics ----------------------------------------------------------------------------


def test_retrieval_metrics_by_hand():
    top_items = np.array(
        [
            [0, 1, 2],  # relevant {1, 5}: hit at rank 2
            [4, 2, 3],  # relevant {3}: hit at rank 3 only
            [0, 1, 2],  # no held-out items: skipped
            [5, 0, 1],
        ]
    )  # relevant {0, 1, 2, 4} (more than K): hits at ranks 2 and 3
    relevant = csr([[0, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0]])
    result = metrics.retrieval_metrics(top_items, relevant, ks=(2, 3))

    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts of ranks 2 and 3
    # K=2: recall 1/min(2,2), 0/1, 1/min(2,4)
    assert result["recall_at_2"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert result["ndcg_at_2"] == pytest.approx((d2 / (1 + d2) + 0 + d2 / (1 + d2)) / 3)
    assert result["hit_rate_at_2"] == pytest.approx(2 / 3)
    # K=3: the single-item user is recalled fully; the 4-item user has denominator min(3, 4) = 3
    assert result["recall_at_3"] == pytest.approx((1 / 2 + 1 / 1 + 2 / 3) / 3)
    assert result["ndcg_at_3"] == pytest.approx((d2 / (1 + d2) + d3 / 1 + (d2 + d3) / (1 + d2 + d3)) / 3)
    assert result["hit_rate_at_3"] == pytest.approx(1.0)
    assert result["n_users_evaluated"] == 3
    assert set(result) == {f"{name}_at_{k}" for name in ("recall", "ndcg", "hit_rate") for k in (2, 3)} | {
        "n_users_evaluated"
    }


def test_retrieval_metrics_perfect_lists_score_one():
    relevant = csr([[1, 1, 0, 0], [0, 0, 0, 1]])
    result = metrics.retrieval_metrics(np.array([[1, 0, 3], [3, 0, 1]]), relevant, ks=(1, 2))
    assert result["recall_at_2"] == result["ndcg_at_2"] == result["hit_rate_at_2"] == 1.0
    assert result["recall_at_1"] == 1.0  # denominator min(1, 2) = 1


def test_retrieval_metrics_reject_bad_input():
    relevant = csr([[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="at least k=3"):
        metrics.retrieval_metrics(np.array([[0, 1], [1, 2]]), relevant, ks=(3,))
    with pytest.raises(ValueError, match="rows"):
        metrics.retrieval_metrics(np.array([[0, 1]]), relevant, ks=(2,))
    with pytest.raises(ValueError, match="repeats"):
        metrics.retrieval_metrics(np.array([[0, 0], [1, 2]]), relevant, ks=(2,))
    with pytest.raises(ValueError, match="no user"):
        metrics.retrieval_metrics(np.array([[0, 1], [1, 2]]), csr(np.zeros((2, 3))), ks=(2,))


# ---- beyond accuracy --------------------------------------------------------------------------------


def test_coverage():
    top_items = np.array([[0, 1], [1, 2]])
    assert metrics.coverage_at_k(top_items, n_items=5, k=2) == pytest.approx(3 / 5)
    assert metrics.coverage_at_k(top_items, n_items=5, k=1) == pytest.approx(2 / 5)


def test_item_popularity_share_and_novelty():
    X_train = csr([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]])
    # item 2 has no train user: clipped to 1 / 4 users
    np.testing.assert_allclose(metrics.item_popularity_share(X_train), [0.5, 1.0, 0.25])

    popularity = np.array([0.5, 0.25, 1.0, 1 / 8])
    top_items = np.array([[0, 1], [1, 3]])  # -log2 p = 1, 2, 2, 3
    assert metrics.novelty(top_items, popularity, k=2) == pytest.approx(2.0)
    assert metrics.novelty(top_items, popularity, k=1) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="item_popularity_share"):
        metrics.novelty(top_items, np.array([2.0, 1.0, 0.0, 5.0]), k=2)  # counts, not shares


def test_intra_list_diversity_by_hand():
    genres = np.array(
        [
            [1, 0, 0],  # item 0: {A}
            [1, 1, 0],  # item 1: {A, B}
            [0, 0, 1],  # item 2: {C}
            [1, 1, 0],
        ]
    )  # item 3: {A, B}
    top_items = np.array(
        [
            [0, 1, 2],  # distances .5, 1, 1
            [1, 3, 0],
        ]
    )  # distances 0, .5, .5
    expected = ((0.5 + 1 + 1) / 3 + (0 + 0.5 + 0.5) / 3) / 2
    assert metrics.intra_list_diversity(top_items, genres, k=3) == pytest.approx(expected)
    assert metrics.intra_list_diversity(top_items, sp.csr_matrix(genres), k=3) == pytest.approx(expected)
    assert metrics.intra_list_diversity(top_items, genres, k=2) == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="k must be >= 2"):
        metrics.intra_list_diversity(top_items, genres, k=1)


def test_gini_index_by_hand():
    # counts per item [2, 1, 1, 0]: sorted [0, 1, 1, 2], G = (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4)
    assert metrics.gini_index(np.array([[0, 1], [0, 2]]), n_items=4, k=2) == pytest.approx(0.375)
    assert metrics.gini_index(np.array([[0, 1], [2, 3]]), n_items=4, k=2) == pytest.approx(0.0)
    # one item takes every slot: the maximum (n - 1) / n
    assert metrics.gini_index(np.array([[2], [2], [2]]), n_items=4, k=1) == pytest.approx(0.75)


def test_beyond_accuracy_keys_and_values():
    genres = np.eye(4)
    popularity = np.full(4, 0.5)
    top_items = np.array([[0, 1], [0, 2]])
    result = metrics.beyond_accuracy(top_items, 4, popularity, genres, k=2)
    assert result == pytest.approx({"coverage_at_2": 0.75, "novelty": 1.0, "intra_list_diversity": 1.0, "gini": 0.375})
    # the coverage key names its k; the default k is 10
    ten_items = np.array([np.arange(10), np.arange(10)])
    assert set(metrics.beyond_accuracy(ten_items, 10, np.full(10, 0.5), np.eye(10))) == {
        "coverage_at_10",
        "novelty",
        "intra_list_diversity",
        "gini",
    }


def test_results_table_keeps_the_columns_and_divides_the_ratio_rows():
    import pandas as pd

    from recsys.evaluation.full_ranking import results_table

    results = {"a": {"recall": 0.2, "ndcg": 0.1, "other": 9.0}, "b": {"recall": 0.4, "ndcg": 0.4, "other": 1.0}}
    table = results_table(results, ["recall", "ndcg"], [("a", "b")])
    assert list(table.columns) == ["recall", "ndcg"]
    assert list(table.index) == ["a", "b", "a / b"]
    pd.testing.assert_series_equal(table.loc["a / b"], pd.Series({"recall": 0.5, "ndcg": 0.25}, name="a / b"))
    with pytest.raises(KeyError, match=r"without results: \['c'\]"):
        results_table(results, ["recall"], [("a", "c")])
