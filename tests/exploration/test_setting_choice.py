"""Choosing an exploration setting on val: the choice never reads a test label, the chosen setting is scored after."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.full_ranking import ListEvaluator
from recsys.exploration import reranking, setting_choice
from recsys.exploration.setting_choice import ValEvaluator
from recsys.ranking.ranker_features import FeatureSources, LeakageError
from recsys.retrieval.candidates import merge_sources
from tests.online_fixtures import NEVER_RATED_MOVIE, tiny_store_and_encoder, tiny_tables

K = 2


def held_out(interactions: pd.DataFrame, split: str) -> pd.Series:
    """Each user's one movie of `split` (tiny_tables gives every user one val and one test movie)."""
    return interactions[interactions["split"] == split].set_index("user_id")["movie_id"].sort_index()


def sweep(interactions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Two settings' (n_users, K) lists of the val users: both put the user's val movie first (val NDCG@2 = 1).

    "reference" fills the second slot with the movie nobody rated, "explore" with a movie the user has not
    rated, spread over the catalogue (wider coverage): on val, "explore" is chosen.
    """
    val = held_out(interactions, "val")
    catalogue = np.setdiff1d(np.unique(interactions["movie_id"]), [NEVER_RATED_MOVIE])
    spread = [
        np.setdiff1d(catalogue, interactions.loc[interactions["user_id"] == user, "movie_id"])[i % 3]
        for i, user in enumerate(val.index)
    ]
    return {
        "reference": np.column_stack([val.to_numpy(), np.full(len(val), NEVER_RATED_MOVIE)]),
        "explore": np.column_stack([val.to_numpy(), spread]),
    }


def with_test_movie(interactions: pd.DataFrame, movie_id: int) -> pd.DataFrame:
    """The interactions with every user's test movie replaced by `movie_id` (one no user has rated)."""
    return interactions.assign(movie_id=interactions["movie_id"].where(interactions["split"] != "test", movie_id))


@pytest.fixture(scope="module")
def tables():
    _, movies, interactions = tiny_tables()
    return movies, interactions


def test_the_choice_reads_no_test_label(tables):
    movies, interactions = tables
    lists = sweep(interactions)
    choice = setting_choice.choose_on_val(ValEvaluator.build(interactions, movies), lists, "reference", 0.05, k=K)
    assert choice.chosen == "explore"
    assert choice.table.loc["explore", "coverage_at_2"] > choice.table.loc["reference", "coverage_at_2"]
    # test labels that would move a choice made on test: every test movie is the reference's second movie, so on
    # test "explore" loses all of the reference's NDCG and "reference" would be served
    moved = with_test_movie(interactions, NEVER_RATED_MOVIE)
    for data, chosen_on_test in ((interactions, "explore"), (moved, "reference")):
        on_test = setting_choice.evaluate_settings(ListEvaluator.for_test(data, movies), lists, K)
        assert reranking.choose_setting(on_test, "reference", 0.05, "ndcg_at_2", "coverage_at_2") == chosen_on_test
    # the choice on val: the same from the same val numbers, whatever the test rows are, or without any
    for data in (moved, interactions[interactions["split"] != "test"]):
        again = setting_choice.choose_on_val(ValEvaluator.build(data, movies), lists, "reference", 0.05, k=K)
        assert again.chosen == choice.chosen
        pd.testing.assert_frame_equal(again.table, choice.table)


def test_the_val_evaluator_is_built_without_the_test_rows(tables):
    movies, interactions = tables
    full = ValEvaluator.build(interactions, movies)
    blind = ValEvaluator.build(interactions[interactions["split"] != "test"], movies)
    np.testing.assert_array_equal(full.users, blind.users)
    np.testing.assert_array_equal(full.catalogue, blind.catalogue)
    np.testing.assert_array_equal(full.popularity_share, blind.popularity_share)
    assert (full.relevant != blind.relevant).nnz == 0 and (full.genres != blind.genres).nnz == 0
    # it scores val: a list of each user's val movie is perfect, one of their test movie scores nothing
    lists = sweep(interactions)
    assert full.evaluate(lists["reference"], K)["ndcg_at_2"] == 1.0
    test_first = np.column_stack([held_out(interactions, "test").to_numpy(), lists["reference"][:, 1]])
    assert full.evaluate(test_first, K)["recall_at_2"] == 0.0


def test_a_test_evaluator_is_refused_and_unknown_settings_are_named(tables):
    movies, interactions = tables
    lists = sweep(interactions)
    with pytest.raises(TypeError, match="ValEvaluator"):
        setting_choice.choose_on_val(ListEvaluator.for_test(interactions, movies), lists, "reference", 0.05, k=K)
    with pytest.raises(KeyError, match="nope"):
        setting_choice.choose_on_val(ValEvaluator.build(interactions, movies), lists, "reference", 0.05, ["nope"])
    # `among` restricts the choice, not the table
    choice = setting_choice.choose_on_val(
        ValEvaluator.build(interactions, movies), lists, "reference", 0.05, ["reference"], k=K
    )
    assert choice.chosen == "reference" and list(choice.table.index) == list(lists)


def test_evaluate_settings_averages_the_repeats_of_a_randomised_setting(tables):
    movies, interactions = tables
    evaluator = ValEvaluator.build(interactions, movies)
    lists = sweep(interactions)
    lists["test_first"] = np.column_stack([held_out(interactions, "test").to_numpy(), lists["reference"][:, 1]])
    repeats = np.stack([lists["reference"], lists["test_first"]])
    table = setting_choice.evaluate_settings(evaluator, {"one": lists["reference"], "two": repeats}, K)
    each = [pd.Series(evaluator.evaluate(lists[name], K)) for name in ("reference", "test_first")]
    expected = (each[0] + each[1]) / 2
    pd.testing.assert_series_equal(table.loc["two"], expected, check_names=False)
    assert table.loc["one", "ndcg_at_2"] == 1.0
    with pytest.raises(ValueError, match="n_users"):
        setting_choice.evaluate_settings(evaluator, {"short": lists["reference"][:3]}, K)


def test_choice_metrics_say_where_the_choice_was_made_and_give_both_numbers():
    table = pd.DataFrame({"ndcg_at_10": [0.3, 0.29], "coverage_at_10": [0.4, 0.5]}, index=["none", "some"])
    test = pd.DataFrame({"ndcg_at_10": [0.31, 0.28], "coverage_at_10": [0.41, 0.52]}, index=["none", "some"])
    written = setting_choice.choice_metrics(setting_choice.SettingChoice("some", table), test)
    assert written == {
        "setting_chosen_on": "val",
        "setting_chosen": "some",
        "val_ndcg_at_10_chosen": 0.29,
        "val_coverage_at_10_chosen": 0.5,
        "ndcg_at_10_chosen": 0.28,
        "coverage_at_10_chosen": 0.52,
    }


class _RatingLike:
    """A served ranker that is not a learned one: its val-stage score is the train-only predicted rating."""


def test_val_stage_scores_build_val_features_and_refuse_sources_fitted_on_val():
    store, _, _ = tiny_store_and_encoder()
    rng = np.random.default_rng(0)
    store = store.with_vectors(rng.normal(size=(len(store.users), 4)), rng.normal(size=(len(store.movies), 4)))
    user = int(store.users.index[0])
    unseen = np.setdiff1d(store.movies.index, store.history_movies(user))[:3]
    candidates = merge_sources(pd.DataFrame({"user_id": user, "movie_id": unseen, "retrieval_score": [3.0, 2.0, 1.0]}))

    def predicted(users, movies):
        return movies.astype(np.float64)

    sources = FeatureSources(store, 3, predicted_rating=predicted, fitted_on={"rating_model": ("train",)})
    np.testing.assert_array_equal(
        setting_choice.val_stage_scores(_RatingLike(), sources, candidates), store.movie_positions(unseen)
    )
    leaky = FeatureSources(store, 3, predicted_rating=predicted, fitted_on={"rating_model": ("train", "val")})
    with pytest.raises(LeakageError):
        setting_choice.val_stage_scores(_RatingLike(), leaky, candidates)
    with pytest.raises(ValueError, match="predicted rating"):
        setting_choice.val_stage_scores(_RatingLike(), FeatureSources(store, 3), candidates)
