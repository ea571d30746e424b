"""Fit records: the fingerprint of what a model was fitted on, and the run's split set it matches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.features.encoding import FeatureEncoder
from recsys.features.fit_records import FitMatch, FitRecord, RunInteractions, fingerprint, matrix_fingerprint
from tests.online_fixtures import tiny_tables


@pytest.fixture(scope="module")
def interactions():
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"user_id": rng.integers(1, 60, 3000), "movie_id": rng.integers(1, 200, 3000) * 10})
    table = pairs.drop_duplicates().reset_index(drop=True)
    table["rating"] = rng.integers(1, 6, len(table)).astype(np.int8)
    table["split"] = rng.choice(["train", "val", "test"], len(table), p=[0.8, 0.1, 0.1])
    return table


def record_of(table: pd.DataFrame) -> FitRecord:
    return fingerprint(table["user_id"].to_numpy(), table["movie_id"].to_numpy())


def test_the_fingerprint_ignores_order_and_user_names_and_sees_any_changed_example(interactions):
    train = interactions[interactions["split"] == "train"]
    record = record_of(train)
    assert record == record_of(train.sample(frac=1.0, random_state=1))  # another row order
    renamed = train.assign(user_id=train["user_id"] * 7 + 1000)
    assert record == record_of(renamed)  # the users' names do not matter, who watched what together does
    assert (record.examples, record.users) == (len(train), train["user_id"].nunique())
    assert record_of(train.iloc[1:]) != record  # one example fewer
    assert record_of(pd.concat([train, interactions[interactions["split"] == "val"].iloc[:1]])) != record
    moved = train.copy()
    moved.iloc[0, moved.columns.get_loc("user_id")] = train["user_id"].iloc[-1] + 1  # the same movie, another user
    assert record_of(moved).examples == record.examples and record_of(moved) != record


def test_a_matrix_with_unnamed_rows_gives_the_fingerprint_of_its_table(interactions):
    train = interactions[interactions["split"] == "train"]
    users = np.sort(interactions["user_id"].unique())[::-1]  # any row order, users without train rows included
    movie_ids = np.arange(5, 2100, 5)
    matrix = sp.csr_matrix(
        (
            np.ones(len(train)),
            (pd.Index(users).get_indexer(train["user_id"]), np.searchsorted(movie_ids, train["movie_id"])),
        ),
        shape=(len(users) + 3, len(movie_ids)),  # and empty rows
    )
    assert matrix_fingerprint(matrix, movie_ids) == record_of(train)
    with pytest.raises(ValueError, match="movie ids for a matrix of"):
        matrix_fingerprint(matrix, movie_ids[1:])


def test_the_run_tells_which_splits_and_positives_a_record_comes_from(interactions):
    fits = RunInteractions(interactions)
    train_val = interactions[interactions["split"].isin(["train", "val"])]
    assert fits.match(record_of(interactions[interactions["split"] == "train"])) == FitMatch(("train",), 1.0)
    assert fits.match(record_of(train_val)) == FitMatch(("train", "val"), 1.0)
    assert fits.match(record_of(interactions)) == FitMatch(("train", "val", "test"), 1.0)
    positives = train_val[train_val["rating"] >= 4]
    assert str(fits.match(record_of(positives))) == "train + val ratings >= 4"
    assert fits.match(record_of(positives.iloc[1:])) is None  # data of no split set
    assert fits.match(record_of(positives.assign(movie_id=positives["movie_id"] + 1))) is None  # same size, other data
    assert "train + val" in fits.describe() and f"{len(train_val):,}" in fits.describe()


def test_a_record_of_encoder_indices_is_matched_through_the_same_encoder():
    users, movies, interactions = tiny_tables()
    train = interactions[interactions["split"] == "train"]
    encoder = FeatureEncoder.fit(users, movies, train, min_title_token_count=1)
    inputs = encoder.example_inputs(interactions, encoder.user_table(users), encoder.movie_table(movies))
    seen = interactions["split"].isin(["train", "val"]).to_numpy()  # an id the encoder never saw is index 0
    user_index, movie_index = inputs.examples["user_id"], inputs.movies["movie_id"][inputs.examples["movie_row"]]
    record = fingerprint(user_index[seen], movie_index[seen], ids="encoder")
    fits = RunInteractions(interactions)
    assert fits.match(record, encoder) == FitMatch(("train", "val"), 1.0)
    assert fits.match(FitRecord(record.examples, record.users, record.digest), encoder) is None  # read as raw ids
    with pytest.raises(ValueError, match="FeatureEncoder"):
        fits.match(record)


def test_a_record_round_trips_and_refuses_an_unknown_id_kind():
    record = FitRecord(12, 3, "00ff00ff00ff00ff", "encoder")
    assert FitRecord.from_dict(record.to_dict()) == record and FitRecord.from_dict(None) is None
    with pytest.raises(ValueError, match="ids must be one of"):
        FitRecord(1, 1, "0", "rows")
    with pytest.raises(ValueError, match="interactions lack the columns"):
        RunInteractions(pd.DataFrame({"user_id": [1], "movie_id": [2], "split": ["train"]}))
