"""Hand-checked arithmetic of the rating baselines, the tuning protocol, and the Surprise SVD wrapper."""

import numpy as np
import pandas as pd
import pytest

from recsys.data.rating_scale import RatingScale
from recsys.models.baselines import (
    BiasBaseline,
    GlobalMean,
    MajorityClass,
    NotFittedError,
    RandomGuess,
    RatingPredictor,
    RatingShareSampler,
    SurpriseSVD,
    evaluate_predictor,
    expand_grid,
    tune_on_val,
)
from recsys.models.surprise_trainset import surprise_trainset


def ratings_table(rows):
    """(user_id, movie_id, rating) tuples -> a table with the interactions' dtypes."""
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])
    return df.astype({"user_id": "int32", "movie_id": "int32", "rating": "int8"})


WHOLE_STARS, HALF_STARS = RatingScale(1.0, 5.0, 1.0), RatingScale(0.5, 5.0, 0.5)


def test_every_baseline_follows_the_protocol():
    models = (RandomGuess(WHOLE_STARS), RatingShareSampler(), MajorityClass(), GlobalMean(), BiasBaseline())
    for model in (*models, SurpriseSVD(WHOLE_STARS)):
        assert isinstance(model, RatingPredictor)
        assert isinstance(model.name, str) and model.name


def test_global_mean():
    train = ratings_table([(1, 10, 1), (1, 11, 2), (2, 10, 3), (2, 11, 5)])
    predictions = GlobalMean().fit(train).predict(train.head(3))
    np.testing.assert_allclose(predictions, [2.75] * 3)


def test_majority_class_and_its_tie_break():
    assert MajorityClass().fit(ratings_table([(1, 1, 4), (1, 2, 4), (2, 1, 5)])).majority_rating_ == 4.0
    tied = ratings_table([(1, 1, 4), (1, 2, 4), (2, 1, 3), (2, 2, 3), (3, 1, 5)])
    np.testing.assert_array_equal(MajorityClass().fit(tied).predict(tied.head(2)), [3.0, 3.0])


def test_bias_baseline_without_regularisation_reaches_the_additive_fit():
    # Full 2x2 table [[5, 3], [4, 1]]: mu = 3.25, column means 4.5 and 2, row means 4 and 2.5.
    # ALS from zero: b_i = col mean - mu = (1.25, -1.25); then b_u = row mean - mu = (0.75, -0.75), since
    # the item biases average to 0 in every row; the next item step gives the same b_i: a fixpoint.
    train = ratings_table([(1, 10, 5), (1, 20, 3), (2, 10, 4), (2, 20, 1)])
    model = BiasBaseline(reg_user=0, reg_item=0, n_iters=3).fit(train)
    assert model.global_mean_ == pytest.approx(3.25)
    np.testing.assert_allclose(model.item_bias_, [1.25, -1.25])
    np.testing.assert_allclose(model.user_bias_, [0.75, -0.75])
    np.testing.assert_allclose(model.predict(train), [5.25, 2.75, 3.75, 1.25])


def test_bias_baseline_one_regularised_round_by_hand():
    # mu = 4. Item step (reg 1): b_10 = ((5-4) + (4-4)) / (1+2) = 1/3, b_20 = (3-4) / (1+1) = -1/2.
    # User step (reg 1): b_1 = ((1 - 1/3) + (-1 + 1/2)) / (1+2) = 1/18, b_2 = (0 - 1/3) / (1+1) = -1/6.
    train = ratings_table([(1, 10, 5), (1, 20, 3), (2, 10, 4)])
    model = BiasBaseline(reg_user=1, reg_item=1, n_iters=1).fit(train)
    np.testing.assert_allclose(model.item_bias_, [1 / 3, -1 / 2])
    np.testing.assert_allclose(model.user_bias_, [1 / 18, -1 / 6])
    unseen = ratings_table([(2, 20, 0), (9, 10, 0), (1, 99, 0), (9, 99, 0)])
    np.testing.assert_allclose(
        model.predict(unseen),
        [
            4 - 1 / 6 - 1 / 2,  # both known
            4 + 1 / 3,  # unknown user: bias 0
            4 + 1 / 18,  # unknown movie: bias 0
            4.0,
        ],
    )  # both unknown: the global mean


def test_random_guess_is_seeded_uniform_over_whole_stars():
    train = ratings_table([(1, 1, 4)])
    big = ratings_table([(1, 1, 0)] * 50_000)
    first = RandomGuess(WHOLE_STARS, seed=7).fit(train).predict(big)
    np.testing.assert_array_equal(first, RandomGuess(WHOLE_STARS, seed=7).fit(train).predict(big))
    assert not np.array_equal(first, RandomGuess(WHOLE_STARS, seed=8).fit(train).predict(big))
    levels, counts = np.unique(first, return_counts=True)
    np.testing.assert_array_equal(levels, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.01)
    # on a half-star scale it draws the ten half-star levels
    halves = RandomGuess(HALF_STARS, seed=7).fit(train).predict(big)
    np.testing.assert_array_equal(np.unique(halves), np.arange(1, 11) / 2)


def test_weighted_sampling_follows_the_train_distribution():
    train = ratings_table([(1, 1, 1)] * 10 + [(1, 1, 4)] * 60 + [(1, 1, 5)] * 30)
    big = ratings_table([(1, 1, 0)] * 100_000)
    draws = RatingShareSampler(seed=3).fit(train).predict(big)
    np.testing.assert_array_equal(draws, RatingShareSampler(seed=3).fit(train).predict(big))
    levels, counts = np.unique(draws, return_counts=True)
    np.testing.assert_array_equal(levels, [1, 4, 5])
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.6, 0.3], atol=0.01)


def test_clear_errors_for_unfitted_models_and_missing_columns():
    with pytest.raises(NotFittedError, match="fit"):
        GlobalMean().predict(ratings_table([(1, 1, 3)]))
    with pytest.raises(KeyError, match="rating"):
        GlobalMean().fit(pd.DataFrame({"user_id": [1], "movie_id": [1]}))
    with pytest.raises(ValueError, match="must lie in"):
        RandomGuess(WHOLE_STARS).fit(ratings_table([(1, 1, 9)]))


class ConstantModel:
    """Predicts `value` everywhere; a tuning target whose best setting is known."""

    name = "constant"

    def __init__(self, value, unused=None):
        self.value = value

    def fit(self, train):
        return self

    def predict(self, df):
        return np.full(len(df), float(self.value))


def test_expand_grid():
    assert expand_grid({"a": [1, 2], "b": [3], "c": "x"}) == [{"a": 1, "b": 3, "c": "x"}, {"a": 2, "b": 3, "c": "x"}]
    assert expand_grid([{"a": 1}, {"a": 5}]) == [{"a": 1}, {"a": 5}]
    with pytest.raises(ValueError, match="empty"):
        expand_grid({"a": []})


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_tune_on_val_picks_the_lowest_val_rmse(n_jobs):
    train = ratings_table([(1, 1, 5)])
    val = ratings_table([(1, 1, 2), (1, 2, 4)])  # mean 3: the constant 3 has the lowest RMSE
    best, table = tune_on_val(
        lambda params: ConstantModel(**params),
        {"value": [1, 3, 5], "unused": [0]},
        train,
        val,
        WHOLE_STARS,
        n_jobs=n_jobs,
    )
    assert best == {"value": 3, "unused": 0}
    assert list(table.columns) == ["value", "unused", "rmse_val", "fit_s"]
    np.testing.assert_allclose(table["rmse_val"], [np.sqrt((1 + 9) / 2), 1.0, np.sqrt((9 + 1) / 2)])


class ShiftedMean:
    """Predicts the training mean plus `shift`: what it was fitted on shows in its predictions."""

    name = "shifted_mean"

    def __init__(self, shift):
        self.shift = shift

    def fit(self, train):
        self.mean_ = float(train["rating"].mean())
        return self

    def predict(self, df):
        return np.full(len(df), self.mean_ + self.shift)


@pytest.mark.parametrize("refit", [True, False])
def test_select_refit_evaluate_refits_on_train_and_val_or_keeps_the_train_fit(refit):
    from recsys.training.protocol import select_refit_evaluate

    train = ratings_table([(1, 1, 1), (1, 2, 1)])  # mean 1
    val = ratings_table([(2, 1, 3), (2, 2, 3)])  # shift 2 wins on val (1 + 2 = 3)
    test = ratings_table([(3, 1, 4)])
    row, tuning, model = select_refit_evaluate(
        "m", lambda p: ShiftedMean(**p), {"shift": [0.0, 2.0, 4.0]}, train, val, test, WHOLE_STARS, refit=refit
    )
    assert row["params"] == {"shift": 2.0} and row["rmse_val"] == pytest.approx(0.0)
    # refit: mean of train + val is 2, predicts 4 (exact); the train fit predicts 3
    assert row["rmse_test"] == pytest.approx(0.0 if refit else 1.0)
    assert len(tuning) == 3
    assert model.predict(test).tolist() == [4.0 if refit else 3.0]  # the model that was scored


def test_a_nan_val_score_never_wins_and_all_nan_is_an_error():
    from recsys.models.baselines import best_row

    assert best_row(pd.DataFrame({"rmse_val": [np.nan, 1.2, 0.9, 0.9]})) == 2  # NaN skipped, earliest tie
    with pytest.raises(ValueError, match="every grid point scored NaN"):
        best_row(pd.DataFrame({"rmse_val": [np.nan, np.nan]}))


def test_evaluate_predictor_uses_clipped_rmse_and_mae():
    test = ratings_table([(1, 1, 5), (1, 2, 3)])
    result = evaluate_predictor(ConstantModel(7), test, WHOLE_STARS)  # clipped to 5: errors 0 and 2
    assert result["rmse"] == pytest.approx(np.sqrt(2))
    assert result["mae"] == pytest.approx(1.0)
    assert result["predict_s"] >= 0


def test_surprise_svd_numpy_predictions_match_surprise():
    rng = np.random.default_rng(0)
    n_ratings = 400
    train = ratings_table(
        np.column_stack(
            [rng.integers(1, 31, n_ratings), rng.integers(100, 121, n_ratings), rng.integers(1, 6, n_ratings)]
        )
    )
    train = train.drop_duplicates(["user_id", "movie_id"])
    model = SurpriseSVD(WHOLE_STARS, n_factors=5, n_epochs=5, seed=1).fit(train)
    pairs = ratings_table(
        [
            (1, 100, 0),
            (7, 115, 0),
            (30, 120, 0),  # known users and movies
            (999, 100, 0),
            (1, 999, 0),
            (999, 999, 0),
        ]
    )  # unknown user / movie / both
    assert {1, 7, 30} <= set(train.user_id) and {100, 115, 120} <= set(train.movie_id)
    ours = model.predict(pairs)
    theirs_raw = [model.svd_.predict(u, i, clip=False).est for u, i in zip(pairs.user_id, pairs.movie_id)]
    theirs_clipped = [model.svd_.predict(u, i).est for u, i in zip(pairs.user_id, pairs.movie_id)]
    np.testing.assert_allclose(ours, theirs_raw, rtol=1e-12)
    np.testing.assert_allclose(np.clip(ours, 1, 5), theirs_clipped, rtol=1e-12)
    assert ours[-1] == pytest.approx(train["rating"].mean())  # both unknown: the global mean


@pytest.mark.parametrize("scale", [WHOLE_STARS, HALF_STARS])
def test_surprise_trainset_built_from_arrays_is_surprises_own(scale):
    from surprise import SVD, Dataset, Reader

    rng = np.random.default_rng(3)
    n = 600  # ids in no order, users and movies first seen mid-table, ratings of every level of the scale
    levels = np.arange(scale.low, scale.high + scale.step / 2, scale.step)
    train = pd.DataFrame(
        {
            "user_id": rng.integers(1, 60, n) * 7,
            "movie_id": rng.integers(1, 90, n) * 11,
            "rating": rng.choice(levels, n),
        }
    ).drop_duplicates(["user_id", "movie_id"])
    ours = surprise_trainset(train, scale.bounds)
    theirs = Dataset.load_from_df(train, Reader(rating_scale=scale.bounds)).build_full_trainset()
    assert ours.ur == theirs.ur and list(ours.ur) == list(theirs.ur)  # the order SVD reads the pairs in
    assert ours.ir == theirs.ir and list(ours.ir) == list(theirs.ir)
    assert ours._raw2inner_id_users == theirs._raw2inner_id_users
    assert ours._raw2inner_id_items == theirs._raw2inner_id_items
    assert (ours.n_users, ours.n_items, ours.n_ratings, ours.rating_scale) == (
        theirs.n_users,
        theirs.n_items,
        theirs.n_ratings,
        theirs.rating_scale,
    )
    assert ours.global_mean == theirs.global_mean
    fitted = [SVD(n_factors=4, n_epochs=3, random_state=5).fit(t) for t in (ours, theirs)]
    for name in ("pu", "qi", "bu", "bi"):
        assert np.array_equal(getattr(fitted[0], name), getattr(fitted[1], name)), name
