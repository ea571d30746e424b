"""Feature encoding, the two-tower rating model built from params, and save/reload in a fresh process."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.core.seeding import set_seed
from recsys.data.rating_scale import RatingScale
from recsys.features.encoding import FeatureEncoder, resolve_features
from recsys.models.configs import RetrievalConfig
from recsys.runs.params import load_params
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def tables():
    users = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "gender": ["F", "M", "M"],
            "age_group": ["18-24", "25-34", "25-34"],
            "occupation": ["writer", "programmer", "writer"],
            "zip5": ["98107", "10001", None],
            "city": ["Seattle", "New York", None],
            "state": ["WA", "NY", None],
        }
    )
    movies = pd.DataFrame(
        {
            "movie_id": [10, 20, 30],
            "title_clean": ["Toy Story", "Toy Story 2", "Heat"],
            "year": pd.array([1995, 1999, None], dtype="Int16"),
            "genre_Action": np.array([0, 0, 1], np.int8),
            "genre_Comedy": np.array([1, 1, 0], np.int8),
        }
    )
    rng = np.random.default_rng(0)
    n = 600
    interactions = pd.DataFrame(
        {
            "user_id": rng.choice([1, 2, 3], n),
            "movie_id": rng.choice([10, 20, 30], n),
            "hour": rng.integers(0, 24, n),
            "weekday": rng.integers(0, 7, n),
            "month": rng.integers(1, 13, n),
        }
    )
    interactions["rating"] = (3 + (interactions["user_id"] == 1) - (interactions["movie_id"] == 30)).astype(np.float32)
    return users, movies, interactions


def test_encoder_reserves_zero_for_missing_and_unseen(tables):
    users, movies, interactions = tables
    train = interactions[interactions["user_id"] != 3]
    encoder = FeatureEncoder.fit(users, movies, train)
    user_table = encoder.user_table(users)
    assert user_table.loc[3, "user_id_idx"] == 0  # never in train: the shared unknown row
    assert user_table.loc[3, "zip5"] == 0 and user_table.loc[1, "zip5"] > 0
    movie_table = encoder.movie_table(movies)
    assert movie_table.loc[30, "release_year"] == 0  # missing year
    # "toy" and "story" appear in two titles (kept), "heat" and "2" once (unknown token 0)
    assert set(encoder.title_vocabulary) == {"toy", "story"}
    assert movie_table.loc[20, ["title_0", "title_1", "title_2"]].tolist()[:2] == [2, 1]
    inputs = encoder.interaction_inputs(interactions, user_table, movie_table)
    assert inputs["genres"].shape == (len(interactions), 2) and inputs["title"].shape[1] == encoder.title_length
    assert inputs["genres"].dtype == np.int8  # 0/1 flags, cast to float inside the movie tower
    assert inputs["hour"].min() >= 1 and inputs["month"].max() <= 12
    no_context = encoder.interaction_inputs(
        interactions.drop(columns=["hour", "weekday", "month"]), user_table, movie_table, context=False
    )
    assert set(inputs) - set(no_context) == {"hour", "weekday", "month"}


def test_encoder_roundtrip(tmp_path, tables):
    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    loaded = FeatureEncoder.load(encoder.save(tmp_path / "encoder.json"))
    pd.testing.assert_frame_equal(loaded.user_table(users), encoder.user_table(users))
    pd.testing.assert_frame_equal(loaded.movie_table(movies), encoder.movie_table(movies))


def test_resolve_features():
    assert resolve_features(["ids"]) == set()
    assert resolve_features(["user"]) == {"age_group", "gender", "occupation", "zip5", "city", "state"}
    assert resolve_features(["genres", "hour"]) == {"genres", "hour"}
    with pytest.raises(ValueError, match="empty"):
        resolve_features([])
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['colour'\]"):
        resolve_features(["colour"])


def test_features_the_data_lacks_are_left_out_and_named():
    from recsys.features.encoding import available_groups, unavailable

    ids_only_users = {"user_id", "movie_id", "genres", "title", "release_year", "hour", "weekday", "month"}
    assert resolve_features(["user", "movie"], ids_only_users) == {"genres", "title", "release_year"}
    assert unavailable(["user", "genres"], ids_only_users) == [
        "age_group",
        "gender",
        "occupation",
        "zip5",
        "city",
        "state",
    ]
    assert unavailable(["user"], ids_only_users | {"gender", "age_group", "occupation"}) == ["zip5", "city", "state"]
    assert available_groups(ids_only_users) == ["movie", "context"]
    assert available_groups(ids_only_users | {"city"}) == ["user", "movie", "context"]


def test_models_train_on_users_without_attributes(tables):
    """ML-10M on: the users table holds user_id only; both models build and learn without user features."""
    from recsys.models.rating_model import build_rating_model
    from recsys.models.retrieval_model import build_retrieval_model, model_inputs, user_embeddings

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users[["user_id"]], movies, interactions)
    assert encoder.user_features == [] and "gender" not in encoder.cardinalities()
    user_table = encoder.user_table(users[["user_id"]])
    assert list(user_table.columns) == ["user_id_idx"]
    inputs = encoder.interaction_inputs(interactions, user_table, encoder.movie_table(movies))
    assert not {"gender", "city"} & set(inputs)
    set_seed(0)
    model = build_rating_model(encoder.cardinalities(), small_config(features=["user", "movie", "context"]), 3.0)
    history = model.fit(inputs, interactions["rating"].to_numpy(), epochs=3, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not any("city_embedding" in v.name for v in model.trainable_variables)
    assert any("title_word_embedding" in v.name for v in model.trainable_variables)

    config = RetrievalConfig.from_params({**load_params()["retrieval"], "embedding_dim": 8, "side_dim": 4})
    assert model_inputs(config, encoder.cardinalities())[0] == ["user_id"]
    retrieval = build_retrieval_model(encoder.cardinalities(), config)
    assert user_embeddings(retrieval, encoder, user_table, [1, 2]).shape == (2, 8)


def small_config(**overrides):
    """The default rating-model config (params/default.yaml), made small for the tiny data."""
    from recsys.models.configs import RatingConfig

    default = RatingConfig.from_params(load_params()["rating"])
    return dataclasses.replace(default, **{"embedding_dim": 8, "side_dim": 4, "batch_size": 64, **overrides})


@pytest.mark.parametrize("features", [["ids"], ["user"], ["user", "movie"], ["user", "movie", "context"], ["title"]])
def test_model_builds_from_params_for_each_feature_set(tables, features):
    from recsys.models.rating_model import build_rating_model

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    inputs = encoder.interaction_inputs(interactions, encoder.user_table(users), encoder.movie_table(movies))
    set_seed(0)
    model = build_rating_model(encoder.cardinalities(), small_config(features=features), 3.0)
    predictions = model.predict(inputs, verbose=0)
    assert predictions.shape == (len(interactions),)
    # starts near the global mean: the head starts at zero, the biases at zero, the dot product of
    # small random vectors is small (over 40 random draws the largest deviation was 0.47)
    assert abs(np.median(predictions) - 3.0) < 0.2 and np.abs(predictions - 3.0).max() < 1.0
    names = {v.name for v in model.trainable_variables}
    assert any("city_embedding" in n for n in names) == ("user" in features)
    assert any("title_word_embedding" in n for n in names) == (
        features in (["user", "movie"], ["user", "movie", "context"], ["title"])
    )


def test_training_learns_and_early_stopping_restores_best(tables):
    from recsys.training import rating_training as training

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    inputs = encoder.interaction_inputs(interactions, encoder.user_table(users), encoder.movie_table(movies))
    y = interactions["rating"].to_numpy(np.float32)
    config = small_config(learning_rate=0.05, max_epochs=15, l2=0.0)
    result = training.train_rating_model(
        config, encoder.cardinalities(), inputs, y, seed=1, x_val=inputs, y_val=y, verbose=0
    )
    val = result.history["val_root_mean_squared_error"]
    assert min(val) < 0.5 * val[0]
    assert result.best_epoch == int(np.argmin(val)) + 1
    again = training.train_rating_model(
        config, encoder.cardinalities(), inputs, y, seed=1, x_val=inputs, y_val=y, verbose=0
    )
    assert again.history["val_root_mean_squared_error"] == val  # one seed, same run


def test_saved_model_reloads_in_a_fresh_process_with_identical_predictions(tmp_path, tables):
    from recsys.training import rating_training as training

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    inputs = encoder.interaction_inputs(interactions, encoder.user_table(users), encoder.movie_table(movies))
    y = interactions["rating"].to_numpy(np.float32)
    result = training.train_rating_model(
        small_config(), encoder.cardinalities(), inputs, y, seed=3, epochs=2, verbose=0
    )
    folder = training.save_rating_model(
        result.model, encoder, tmp_path / "rating_model", fitted_on=("train",), scale=RatingScale(1.0, 5.0, 1.0)
    )
    np.savez(tmp_path / "inputs.npz", **inputs)
    expected = training.predict_ratings(result.model, inputs)
    script = (
        "import json, sys, numpy as np\n"
        "from recsys.training import rating_training as training\n"
        f"model, _ = training.load_rating_model({str(folder)!r})\n"
        f"inputs = dict(np.load({str(tmp_path / 'inputs.npz')!r}))\n"
        "print(json.dumps(training.predict_ratings(model, inputs).tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    reloaded = np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(reloaded, expected)


def test_load_without_a_saved_model_says_so(tmp_path):
    from recsys.training import rating_training as training

    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        training.load_rating_model(tmp_path)


def test_training_dataset_visits_every_example_once_per_epoch_in_a_new_order():
    from recsys.training import rating_training as training

    n, batch = 1000, 96
    inputs = {"row": np.arange(n, dtype=np.int64), "pair": np.stack([np.arange(n), -np.arange(n)], axis=1)}
    labels = np.arange(n, dtype=np.float32) / 10
    dataset = training.training_dataset(inputs, labels, batch, seed=7)

    def one_epoch(ds):
        batches = list(ds.as_numpy_iterator())
        for features, y in batches:  # each batch keeps features and labels of the same examples together
            np.testing.assert_array_equal(features["pair"][:, 0], features["row"])
            np.testing.assert_array_equal(features["pair"][:, 1], -features["row"])
            np.testing.assert_allclose(y, features["row"] / 10, rtol=1e-6)
        assert [len(y) for _, y in batches] == [batch] * (n // batch) + [n % batch]
        return np.concatenate([f["row"] for f, _ in batches])

    first, second = one_epoch(dataset), one_epoch(dataset)
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert not np.array_equal(first, second)  # reshuffled between epochs (a new iterator each)
    assert not np.array_equal(first, np.arange(n))  # shuffled at all
    rebuilt = training.training_dataset(inputs, labels, batch, seed=7)  # one seed, the same epochs
    np.testing.assert_array_equal(one_epoch(rebuilt), first)
    np.testing.assert_array_equal(one_epoch(rebuilt), second)
    assert not np.array_equal(one_epoch(training.training_dataset(inputs, labels, batch, seed=8)), first)


def test_movie_features_kept_once_per_movie_give_the_same_batches(tables):
    from recsys.features.encoding import ExampleInputs
    from recsys.training import rating_training as training

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)
    compact = encoder.example_inputs(interactions, user_table, movie_table)
    flat = encoder.interaction_inputs(interactions, user_table, movie_table)
    assert len(compact.movies["title"]) == len(movie_table) and len(compact) == len(interactions)
    labels = interactions["rating"].to_numpy("float32")
    for (a, ya), (b, yb) in zip(
        training.training_dataset(compact, labels, 3, seed=1).as_numpy_iterator(),
        training.training_dataset(flat, labels, 3, seed=1).as_numpy_iterator(),
        strict=True,
    ):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(ya, yb)
    both = training.concat_inputs(compact, compact)
    assert isinstance(both, ExampleInputs) and len(both) == 2 * len(interactions)
    np.testing.assert_array_equal(both.flat()["genres"], np.concatenate([flat["genres"]] * 2))
    other = encoder.example_inputs(interactions, user_table, movie_table.iloc[::-1])
    with pytest.raises(ValueError, match="different movie tables"):
        training.concat_inputs(compact, other)
    no_context = encoder.example_inputs(interactions, user_table, movie_table, context=False)
    with pytest.raises(ValueError, match="different inputs"):
        training.concat_inputs(compact, no_context)


def test_configs_take_exactly_their_params_group():
    from recsys.models.configs import RatingConfig, RetrievalConfig

    params = load_params()
    assert RatingConfig.from_params(params["rating"]).to_dict() == params["rating"]
    retrieval = RetrievalConfig.from_params(params["retrieval"]).to_dict()
    # `negatives` lists the variants trained side by side; a config holds one (the first)
    assert retrieval == {**params["retrieval"], "negatives": params["retrieval"]["negatives"][0]}
    with pytest.raises(KeyError, match=r"missing \['ablation'\], unknown \['extra'\]"):
        RatingConfig.from_params({**{k: v for k, v in params["rating"].items() if k != "ablation"}, "extra": 1})


def test_grid_points_replace_the_grid_settings_in_order_and_keep_the_rest():
    from recsys.models.configs import RatingConfig

    grid = {"learning_rate": [0.001, 0.002], "l2": [], "id_learning_rate": [0.003, 0.005]}
    config = small_config(val_grid=grid, l2=0.07)
    points = config.grid_points()
    assert [(p.learning_rate, p.id_learning_rate) for p in points] == [
        (0.001, 0.003),
        (0.001, 0.005),
        (0.002, 0.003),
        (0.002, 0.005),
    ]
    assert all(p.l2 == 0.07 and p.val_grid == {} and p.embedding_dim == 8 for p in points)
    assert small_config(val_grid={"l2": []}).grid_points() == [small_config(val_grid={})]
    with pytest.raises(KeyError, match=r"names \['epochs'\]"):
        small_config(val_grid={"epochs": [1, 2]})
    assert RatingConfig.from_params({**load_params()["rating"], "val_grid": {}}).grid_points()[0].val_grid == {}


def fake_fit(val_by_rate):
    """A `choose_on_val` fit whose val RMSE curve depends on the point's learning rate; records what it fitted."""
    from recsys.training.rating_training import TrainingResult

    fitted = []

    def fit(point, position):
        fitted.append((position, point.learning_rate))
        curve = val_by_rate[point.learning_rate]
        return TrainingResult(
            f"model {position}",
            {"val_root_mean_squared_error": curve},
            len(curve),
            int(np.nanargmin(curve)) + 1 if not np.isnan(curve).all() else 1,
            1.5,
            100.0,
            [1.5],
        )

    return fit, fitted


def test_choose_on_val_keeps_the_lowest_val_rmse_earlier_on_ties_never_nan():
    from recsys.training.rating_training import choose_on_val

    config = small_config(val_grid={"learning_rate": [0.1, 0.2, 0.3, 0.4]})
    fit, fitted = fake_fit({0.1: [0.95, 0.9], 0.2: [0.9, 0.85, 0.86], 0.3: [0.85, 0.9], 0.4: [np.nan, np.nan]})
    chosen, selected, table = choose_on_val(config, fit)
    assert fitted == [(0, 0.1), (1, 0.2), (2, 0.3), (3, 0.4)]
    assert chosen.learning_rate == 0.2 and selected.model == "model 1"  # 0.3 ties at 0.85: the earlier point
    assert table["learning_rate"].tolist() == [0.1, 0.2, 0.3, 0.4] and table["chosen"].tolist() == [0, 1, 0, 0]
    assert table["best_epoch"].tolist()[:3] == [2, 2, 1] and table["wall_s"].sum() == 6.0
    nan_only = small_config(val_grid={"learning_rate": [0.4]})
    with pytest.raises(ValueError, match="every one of the 1 rating settings tried on val diverged"):
        choose_on_val(nan_only, fake_fit({0.4: [np.nan]})[0])


def test_distributed_protocol_runs_each_grid_point_as_its_own_job(monkeypatch, tmp_path):
    from recsys.training.distributed import jobs
    from recsys.training.rating_training import TrainingResult

    folders = []

    def train_rating(point, files, seed, scale, settings, job_dir, fit_on=("train",), epochs=None):
        folders.append((Path(job_dir).name, fit_on, epochs, point.learning_rate))
        curve = [0.9, 0.8] if point.learning_rate == 0.002 else [0.95]
        return TrainingResult(None, {"val_root_mean_squared_error": curve}, len(curve), len(curve), 1.0, 10.0, [1.0])

    monkeypatch.setattr(jobs, "train_rating", train_rating)
    monkeypatch.setattr("recsys.training.rating_training.protocol_result", lambda *args: args)
    scale = RatingScale(1, 5, 1)
    for grid, names in (({"learning_rate": [0.001, 0.002]}, ["selected_0", "selected_1"]), ({}, ["selected"])):
        folders.clear()
        config = small_config(val_grid=grid, learning_rate=0.002)
        selected, refit, *_, chosen, table = jobs.early_stopping_refit_test(
            config, None, {"test": (None, None)}, 1, scale, None, tmp_path
        )
        assert [name for name, *_ in folders] == [*names, "refit"]
        assert folders[-1] == ("refit", ("train", "val"), 2, 0.002) and chosen.learning_rate == 0.002
