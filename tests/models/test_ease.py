"""EASE against an independent per-column ridge solution, and the λ search on validation recall."""

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.models.ease import EASE, tune_ease


def per_column_ridge(X, l2):
    """B by definition: column j regresses item j on every other item (diag(B) = 0) with an L2 penalty.

    min_b ||X_j - X_{-j} b||² + λ||b||²  =>  b = (X_{-j}ᵀX_{-j} + λI)⁻¹ X_{-j}ᵀ X_j
    """
    n_items = X.shape[1]
    B = np.zeros((n_items, n_items))
    for j in range(n_items):
        others = [i for i in range(n_items) if i != j]
        X_others = X[:, others]
        B[others, j] = np.linalg.solve(X_others.T @ X_others + l2 * np.eye(n_items - 1), X_others.T @ X[:, j])
    return B


def test_ease_matches_the_constrained_least_squares_solution_on_3x3():
    X = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=float)
    model = EASE(l2=1.0).fit(sp.csr_matrix(X))
    np.testing.assert_allclose(model.weights_, per_column_ridge(X, 1.0), atol=1e-6)
    np.testing.assert_array_equal(np.diag(model.weights_), 0.0)


def test_ease_matches_per_column_ridge_on_a_random_matrix():
    X = (np.random.default_rng(0).random((40, 12)) < 0.3).astype(float)
    model = EASE(l2=5.0).fit(sp.csr_matrix(X))
    np.testing.assert_allclose(model.weights_, per_column_ridge(X, 5.0), atol=1e-5)
    np.testing.assert_array_equal(np.diag(model.weights_), 0.0)


def test_score_is_x_times_b_and_excludes_nothing():
    X = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=np.float32))
    model = EASE(l2=0.5).fit(X)
    scores = model.score(X)
    np.testing.assert_allclose(scores, X.toarray() @ model.weights_, rtol=1e-6)
    assert np.isfinite(scores).all()  # seen items keep real scores; exclusion is top_k_from_scores' job
    with pytest.raises(ValueError, match="item columns"):
        model.score(sp.csr_matrix(np.ones((1, 3))))


def test_ease_rejects_bad_input():
    with pytest.raises(ValueError, match="l2"):
        EASE(l2=0)
    with pytest.raises(TypeError, match="sparse"):
        EASE().fit(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="before fit"):
        EASE().score(sp.csr_matrix(np.ones((1, 2))))


def test_tune_ease_reports_every_lambda_and_picks_the_best_val_recall():
    rng = np.random.default_rng(1)
    interactions = (rng.random((60, 15)) < 0.35).astype(np.float32)
    held_out = interactions * (rng.random((60, 15)) < 0.2)
    X_train = sp.csr_matrix(interactions - held_out)
    X_val = sp.csr_matrix(held_out)
    best, table = tune_ease(X_train, X_val, [100.0, 1.0, 10.0], k=3)
    best_l2 = best.l2
    refit = EASE(best_l2).fit(X_train)  # the returned model is the refit, without a second inverse
    np.testing.assert_array_equal(best.weights_, refit.weights_)
    np.testing.assert_array_equal(best.columns_, refit.columns_)
    assert best.n_items_ == refit.n_items_

    assert list(table["l2"]) == [1.0, 10.0, 100.0]
    assert best_l2 == table.loc[table["recall_at_3"].idxmax(), "l2"]
    # each row equals fitting EASE and evaluating by hand with train items excluded
    for row in table.itertuples():
        model = EASE(l2=row.l2).fit(X_train)
        top_items = metrics.top_k_from_scores(model.score(X_train), 3, exclude=X_train)
        expected = metrics.retrieval_metrics(top_items, X_val, ks=(3,))
        assert row.recall_at_3 == pytest.approx(expected["recall_at_3"])
        assert row.ndcg_at_3 == pytest.approx(expected["ndcg_at_3"])
        assert row.n_users_evaluated == expected["n_users_evaluated"]


def test_an_item_cap_fits_b_on_the_most_watched_items_and_never_proposes_the_rest(tmp_path):
    from recsys.models.ease import load_ease, most_interacted_columns, save_ease
    from recsys.retrieval.candidates import EaseSource

    rng = np.random.default_rng(2)
    X = sp.csr_matrix((rng.random((80, 20)) < np.linspace(0.05, 0.6, 20)).astype(np.float32))
    counts = np.asarray(X.sum(axis=0)).ravel()
    columns = most_interacted_columns(X, 8)
    assert len(columns) == 8 and (np.diff(columns) > 0).all()
    assert counts[columns].min() >= np.delete(counts, columns).max()
    np.testing.assert_array_equal(most_interacted_columns(X, 0), np.arange(20))
    np.testing.assert_array_equal(most_interacted_columns(X, 50), np.arange(20))

    capped = EASE(l2=5.0, max_items=8).fit(X)
    np.testing.assert_array_equal(capped.columns_, columns)
    # B on the covered columns is EASE of the matrix cut to those columns
    np.testing.assert_allclose(capped.weights_, EASE(l2=5.0).fit(X[:, columns]).weights_, atol=1e-6)
    scores = capped.score(X)
    assert scores.shape == (80, 20) and np.isneginf(np.delete(scores, columns, axis=1)).all()
    np.testing.assert_allclose(scores[:, columns], X[:, columns].toarray() @ capped.weights_, rtol=1e-5)
    np.testing.assert_array_equal(capped.row_scores(X)[10:30], scores[10:30])

    movie_ids = np.arange(100, 120)
    model, ids, fitted_on = load_ease(save_ease(capped, movie_ids, tmp_path / "ease", fitted_on=("train",)))
    np.testing.assert_array_equal(ids, movie_ids[columns])
    proposed, _ = EaseSource(model.weights_, ids).top([movie_ids[:5]], 12, [movie_ids[:5]])
    assert set(proposed[0]) <= set(movie_ids[columns])
    with pytest.raises(ValueError, match="19 movie ids for an EASE fitted on 20"):
        save_ease(capped, movie_ids[:19], tmp_path / "bad", fitted_on=("train",))
    with pytest.raises(ValueError, match="max_items"):
        EASE(max_items=-1)


def test_tune_ease_with_a_cap_counts_the_uncovered_held_out_items_as_misses():
    rng = np.random.default_rng(3)
    interactions = (rng.random((70, 16)) < np.linspace(0.05, 0.5, 16)).astype(np.float32)
    held_out = interactions * (rng.random((70, 16)) < 0.25)
    X_train, X_val = sp.csr_matrix(interactions - held_out), sp.csr_matrix(held_out)
    _, table = tune_ease(X_train, X_val, [10.0], k=4, max_items=6)
    model = EASE(10.0, max_items=6).fit(X_train)
    top_items = metrics.top_k_from_scores(model.score(X_train), 4, exclude=X_train)
    expected = metrics.retrieval_metrics(top_items, X_val, ks=(4,))  # every held-out item, covered or not
    assert table.loc[0, "recall_at_4"] == pytest.approx(expected["recall_at_4"])
    assert table.loc[0, "n_users_evaluated"] == expected["n_users_evaluated"]


def test_the_in_place_inverse_mirrors_every_block_and_matches_numpy():
    from recsys.models.ease import _ease_weights, _gram, _spd_inverse

    rng = np.random.default_rng(4)
    A = rng.random((11, 11))
    A = A @ A.T + 11 * np.eye(11)
    for block in (1, 3, 4, 11, 2048):  # mirrored block by block: blocks of 1, uneven, one
        np.testing.assert_allclose(_spd_inverse(A.copy(), block=block), np.linalg.inv(A), rtol=1e-10)
    gram = A.copy()
    P = np.linalg.inv(gram + 2.0 * np.eye(11))
    expected = P / -np.diag(P)
    np.fill_diagonal(expected, 0.0)
    weights = _ease_weights(gram, 2.0)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert weights.flags.c_contiguous and weights.dtype == np.float32
    np.testing.assert_array_equal(gram, A)  # the Gram matrix is left as it was (tune_ease reuses it)
    for dtype in (np.float64, np.float32):  # B as the scaled, reordered copy of P it replaces, to the bit
        G = A.astype(dtype)
        P = _spd_inverse(G + dtype(2.0) * np.eye(11, dtype=dtype))
        reference = P / -np.diag(P).copy()
        np.fill_diagonal(reference, 0.0)
        np.testing.assert_array_equal(_ease_weights(G, 2.0), reference.astype(np.float32, order="C"))
    own = A.astype(np.float32)
    in_place = _ease_weights(own, 2.0, overwrite=True)  # inverted in G's own memory, no copy
    np.testing.assert_array_equal(in_place, _ease_weights(A.astype(np.float32), 2.0))
    assert np.shares_memory(in_place, own) and in_place.flags.c_contiguous
    X = sp.csr_matrix((rng.random((30, 11)) < 0.4).astype(np.float32))  # EASE.fit inverts its own float64 G in place
    np.testing.assert_array_equal(EASE(2.0).fit(X).weights_, _ease_weights(_gram(X), 2.0))


def test_the_refitter_gives_ease_s_weights_of_a_grown_matrix():
    from recsys.models.ease import EaseRefitter

    rng = np.random.default_rng(3)
    start = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    grown = start.tolil()
    for row, column in zip(rng.integers(0, 40, 25), rng.integers(0, 30, 25)):
        grown[row, column] = 1.0
    grown = grown.tocsr()
    refitter = EaseRefitter(start, 5.0)
    np.testing.assert_allclose(refitter.weights(grown), EASE(5.0).fit(grown).weights_, atol=2e-5)
    np.testing.assert_allclose(refitter.weights(start), EASE(5.0).fit(start).weights_, atol=2e-5)
    assert refitter.weights(grown).dtype == np.float32
    # its XᵀX is the grown matrix's own (counts are exact in float32), so B is the same to the bit,
    # call after call (the start's XᵀX is not touched)
    from recsys.models.ease import _ease_weights, _gram

    exact = _ease_weights(_gram(grown).astype(np.float32), 5.0)
    np.testing.assert_array_equal(refitter.weights(grown), exact)
    np.testing.assert_array_equal(refitter.weights(grown), exact)
    np.testing.assert_array_equal(refitter.weights(start), _ease_weights(_gram(start).astype(np.float32), 5.0))
    shrunk = start.tolil()
    shrunk[start.nonzero()[0][0], start.nonzero()[1][0]] = 0
    with pytest.raises(ValueError, match="none removed"):
        refitter.weights(shrunk.tocsr())


def test_ease_source_keeps_its_last_scores_for_the_same_histories_only():
    from recsys.retrieval.candidates import EaseSource

    rng = np.random.default_rng(5)
    X = sp.csr_matrix((rng.random((60, 25)) < 0.3).astype(np.float32))
    movie_ids = np.arange(500, 525)
    source = EaseSource(EASE(l2=4.0).fit(X).weights_, movie_ids)
    histories = [movie_ids[np.flatnonzero(X[row].toarray())] for row in range(6)]
    first = source.scores(histories)
    np.testing.assert_allclose(first, X[:6].toarray() @ source.weights, rtol=1e-5)
    assert source.scores([h.copy() for h in histories]) is first  # equal histories: the kept result
    assert not first.flags.writeable  # the kept result cannot be changed by a caller
    other = source.scores(histories[:5] + [histories[5][:-1]])  # one movie fewer for one user
    assert other is not first
    np.testing.assert_allclose(
        other[5],
        X[5].toarray()[0] @ source.weights - source.weights[np.flatnonzero(X[5].toarray())[-1]],
        rtol=1e-5,
        atol=1e-6,
    )
    # the same ids split otherwise between users are other histories
    moved = [np.concatenate([histories[0], histories[1][:1]]), histories[1][1:], *histories[2:]]
    assert source.scores(moved) is not source.scores(histories)
    single = source.scores(histories[:1])
    np.testing.assert_allclose(single, first[:1], rtol=1e-5, atol=1e-6)
    assert source.scores([histories[0].astype(np.int32)]) is single  # the same ids in another integer type
    ids, _ = source.top(histories, 5, histories)  # `top` works on its own copy
    assert ids.shape == (6, 5) and not source.scores(histories).flags.writeable
