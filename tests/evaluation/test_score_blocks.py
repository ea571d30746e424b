"""Full-ranking lists built a block of users at a time equal the lists of the whole score matrix."""

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.evaluation.score_blocks import RowScores, top_k_in_blocks


def test_lists_in_blocks_equal_the_whole_matrix_with_ties_and_exclusions():
    rng = np.random.default_rng(0)
    queries, candidates = rng.normal(size=(37, 4)), rng.normal(size=(25, 4))
    whole = (queries @ candidates.T).round(1)  # rounding plants ties
    exclude = sp.csr_matrix(rng.random((37, 25)) < 0.3)
    expected = metrics.top_k_from_scores(whole, 7, exclude=exclude)
    for block in (1, 5, 37, 100):
        np.testing.assert_array_equal(top_k_in_blocks(whole, 7, exclude=exclude, block=block), expected)
    lazy = RowScores(whole.shape, lambda rows: whole[rows])
    np.testing.assert_array_equal(top_k_in_blocks(lazy, 7, exclude=exclude, block=8), expected)
    dot = RowScores.dot(queries, candidates)
    assert dot.shape == (37, 25) and len(dot) == 37
    np.testing.assert_allclose(dot[3:9], queries[3:9] @ candidates.T)
    popularity = np.broadcast_to(np.arange(25.0), (37, 25))  # a read-only view is ranked without a copy
    assert (top_k_in_blocks(popularity, 3, block=10) == [24, 23, 22]).all()


def test_blocks_computed_one_at_a_time_and_bad_shapes_refused():
    asked = []

    def score_rows(rows):
        asked.append((rows.start, rows.stop))
        return np.zeros((rows.stop - rows.start, 6))

    top_k_in_blocks(RowScores((10, 6), score_rows), 2, block=4)
    assert asked == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match=r"must be \(rows, 6\), got \(2, 5\)"):
        RowScores((4, 6), lambda rows: np.zeros((2, 5)))[0:2]
    with pytest.raises(ValueError, match="exclude has shape"):
        top_k_in_blocks(np.zeros((4, 6)), 2, exclude=sp.csr_matrix((3, 6)))


def test_lists_come_with_their_scores_when_asked():
    rng = np.random.default_rng(1)
    whole = rng.normal(size=(9, 12)).astype(np.float32)
    exclude = sp.csr_matrix(rng.random((9, 12)) < 0.5)
    top, scores = top_k_in_blocks(whole, 4, exclude=exclude, block=2, with_scores=True)
    np.testing.assert_array_equal(top, metrics.top_k_from_scores(whole, 4, exclude=exclude))
    np.testing.assert_array_equal(scores, np.take_along_axis(whole, top, axis=1))


def test_only_the_rows_asked_for_are_ranked():
    rng = np.random.default_rng(2)
    whole = rng.normal(size=(20, 15))
    exclude = sp.csr_matrix(rng.random((20, 15)) < 0.3)
    rows = np.array([17, 3, 8])
    top = top_k_in_blocks(whole, 5, exclude=exclude, rows=rows, block=2)
    np.testing.assert_array_equal(top, metrics.top_k_from_scores(whole, 5, exclude=exclude)[rows])


def test_evaluation_ranks_only_the_users_with_held_out_items():
    from recsys.evaluation.full_ranking import SplitMatrices, evaluate_scores

    rng = np.random.default_rng(3)
    whole = rng.normal(size=(12, 9))
    train = sp.csr_matrix(rng.random((12, 9)) < 0.2)
    test = sp.lil_matrix((12, 9))
    for user, movie in ((2, 1), (5, 4), (5, 7), (11, 0)):
        test[user, movie] = 1
    matrices = SplitMatrices(np.arange(12), np.arange(9), train, sp.csr_matrix((12, 9)), sp.csr_matrix(test))
    asked = []

    def score_rows(rows):
        asked.extend(np.atleast_1d(np.arange(12)[rows]).tolist())
        return whole[rows]

    result = evaluate_scores(RowScores(whole.shape, score_rows), matrices, "test", ks=(3,))
    assert sorted(asked) == [2, 5, 11] and result["n_users_evaluated"] == 3
    top = metrics.top_k_from_scores(whole, 3, exclude=matrices.seen("test"))
    assert result == metrics.retrieval_metrics(top, matrices.test, ks=(3,))
    with pytest.raises(ValueError, match="block must be at least 1"):
        top_k_in_blocks(whole, 3, block=0)
    with pytest.raises(ValueError, match=r"rows must be row numbers 0..11"):
        top_k_in_blocks(whole, 3, rows=np.array([3, 12]))


def test_a_one_row_tail_joins_the_block_before():
    from recsys.evaluation.score_blocks import _blocks

    assert _blocks(9, 4) == [slice(0, 4), slice(4, 9)]
    assert _blocks(8, 4) == [slice(0, 4), slice(4, 8)]
    assert _blocks(1, 4) == [slice(0, 1)] and _blocks(0, 4) == []
    assert _blocks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
