"""The online feature store: build from notebook 01's tables, save/load, ordered lookups, seen items, popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.core.errors import UnknownMovieError
from recsys.features.feature_store import FeatureStore
from tests.online_fixtures import NEVER_RATED_MOVIE, tiny_store_and_encoder


@pytest.fixture(scope="module")
def built():
    return tiny_store_and_encoder()


def test_build_holds_readable_and_encoded_features(built):
    store, encoder, (users, movies, interactions) = built
    assert store.movies.index.name == "movie_id" and len(store.movies) == len(movies)
    assert store.users.index.name == "user_id" and len(store.users) == len(users)
    for column in ["title", "genres", "year", "popularity", "popularity_rank", "mean_rating"]:
        assert column in store.movies.columns
    for column in ["gender", "age_group", "occupation", "city", "state", "n_train_ratings"]:
        assert column in store.users.columns
    # any model's inputs come from the features held, encoded by that model's encoder
    positions = np.arange(len(store.users))
    expected_users = encoder.user_inputs(
        encoder.user_table(users.set_index("user_id").loc[store.users.index].reset_index())
    )
    for name, values in store.user_inputs(positions, encoder).items():
        np.testing.assert_array_equal(values, expected_users[name])
    expected_movies = encoder.movie_inputs(
        encoder.movie_table(movies.set_index("movie_id").loc[store.movies.index].reset_index())
    )
    for name, values in store.movie_inputs(np.arange(len(store.movies)), encoder).items():
        np.testing.assert_array_equal(values, expected_movies[name])
    assert store.movies.loc[10, "title"] == movies.set_index("movie_id").loc[10, "title_clean"]


def test_popularity_mean_rating_and_user_counts_come_from_train_only(built):
    store, _, (_, movies, interactions) = built
    train = interactions[interactions["split"] == "train"]
    expected = train["movie_id"].value_counts().reindex(movies["movie_id"], fill_value=0)
    np.testing.assert_array_equal(store.movies["popularity"].to_numpy(), expected.to_numpy())
    # val/test interactions exist, so counting every split would differ
    assert (interactions["movie_id"].value_counts().reindex(movies["movie_id"], fill_value=0) != expected).any()
    assert store.movies.loc[NEVER_RATED_MOVIE, "popularity"] == 0
    assert np.isnan(store.movies.loc[NEVER_RATED_MOVIE, "mean_rating"])
    rated = store.movies["mean_rating"].dropna()
    np.testing.assert_allclose(rated, train.groupby("movie_id")["rating"].mean().reindex(rated.index))
    ranks = store.movies.sort_values("popularity_rank")
    assert ranks["popularity_rank"].tolist() == list(range(1, len(ranks) + 1))
    assert ranks["popularity"].is_monotonic_decreasing
    assert (store.users["n_train_ratings"] == train["user_id"].value_counts().reindex(store.users.index)).all()


def test_get_movie_features_keeps_the_order_asked(built):
    store, _, _ = built
    ids = [50, 10, 150, 10]
    table = store.get_movie_features(ids)
    assert table.index.tolist() == ids
    assert table["title"].tolist() == [store.movies.loc[i, "title"] for i in ids]


def test_unknown_movie_error_names_the_ids(built):
    store, _, _ = built
    with pytest.raises(UnknownMovieError, match=r"\[99999, 4242\]") as error:
        store.get_movie_features([10, 99999, 4242, 99999])
    assert error.value.movie_ids == [99999, 4242]
    assert isinstance(error.value, KeyError)


def test_user_lookup_and_seen_movies(built):
    store, _, (_, _, interactions) = built
    assert store.get_user_features(123456) is None
    row = store.get_user_features(3)
    assert row.name == 3 and row["gender"] in {"F", "M"}
    mine = interactions[interactions["user_id"] == 3]
    expected = np.sort(mine.loc[mine["split"].isin(["train", "val"]), "movie_id"].unique())
    np.testing.assert_array_equal(store.seen_movies(3), expected)
    test_movie = mine.loc[mine["split"] == "test", "movie_id"].iloc[0]
    assert test_movie not in store.seen_movies(3)
    assert store.seen_movies(123456).size == 0


def test_popular_movies_skips_excluded(built):
    store, _, _ = built
    top = store.popular_movies(4)
    assert top["popularity_rank"].tolist() == [1, 2, 3, 4]
    without = store.popular_movies(3, exclude=[top.index[0], top.index[2]])
    assert without.index.tolist() == [top.index[1], top.index[3], store.popular_movies(5).index[4]]


def test_save_load_roundtrip(tmp_path, built):
    store, encoder, _ = built
    folder = store.save(tmp_path / "feature_store")
    loaded = FeatureStore.load(folder)
    pd.testing.assert_frame_equal(loaded.movies, store.movies)
    pd.testing.assert_frame_equal(loaded.users, store.users)
    pd.testing.assert_frame_equal(loaded.seen_pairs(), store.seen_pairs())
    assert loaded.seen_splits == store.seen_splits
    for user_id in store.users.index:
        np.testing.assert_array_equal(loaded.seen_movies(user_id), store.seen_movies(user_id))
    positions = np.array([0, 3, 3])
    for name, values in store.movie_inputs(positions, encoder).items():
        np.testing.assert_array_equal(loaded.movie_inputs(positions, encoder)[name], values)
    # saving again replaces the folder in one step and leaves no temporary folders behind
    store.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feature_store"]


def test_load_of_a_missing_store_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="FeatureStore.build"):
        FeatureStore.load(tmp_path / "nothing")


def test_build_needs_the_split_column(built):
    _, encoder, (users, movies, interactions) = built
    with pytest.raises(ValueError, match="split"):
        FeatureStore.build(users, movies, interactions.drop(columns="split"))
    with pytest.raises(ValueError, match="holdout"):
        FeatureStore.build(users, movies, interactions, seen_splits=("train", "holdout"))


def test_describe_user_names_the_attributes_the_release_has(built):
    store, _, (users, movies, interactions) = built
    row = store.users.loc[3]
    line = store.describe_user(3)
    assert line.startswith("user 3: ") and f"({row['n_train_ratings']} train ratings)" in line
    assert all(str(row[name]) in line for name in ("gender", "age_group", "occupation", "city", "state"))
    assert store.describe_user(987654) == "user 987654: not in the store"
    bare = FeatureStore.build(users[["user_id"]], movies, interactions)
    assert bare.describe_user(3) == f"user 3: no attributes in this release ({row['n_train_ratings']} train ratings)"


def test_raised_names_the_error_and_refuses_an_action_that_raises_nothing():
    from recsys.core.errors import raised

    def unknown():
        raise UnknownMovieError([999_999])

    shown = raised(unknown, UnknownMovieError)
    assert shown.startswith("UnknownMovieError: unknown movie id(s) [999999]")
    with pytest.raises(AssertionError, match="nothing was raised"):
        raised(lambda: None, UnknownMovieError)
    with pytest.raises(ValueError):  # another error is not swallowed
        raised(lambda: int("x"), UnknownMovieError)
