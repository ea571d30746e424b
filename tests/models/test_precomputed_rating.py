"""The rating model served from precomputed towers gives the model's own predictions, for every head it can build."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.features.encoding import CONTEXT_FEATURES, FeatureEncoder
from recsys.models.precomputed_rating import PrecomputedRating
from tests.models.test_rating_model import small_config, tables  # noqa: F401  (tables is a fixture)


def _trained(tables, **config):  # noqa: F811
    from recsys.models.rating_model import build_rating_model

    users, movies, interactions = tables
    encoder = FeatureEncoder.fit(users, movies, interactions)
    inputs = encoder.interaction_inputs(interactions, encoder.user_table(users), encoder.movie_table(movies))
    set_seed(0)
    # steps large enough for 3 epochs of tiny data to leave no relu of the [8, 4] head dead to the context
    steps = {"learning_rate": 0.05, "id_learning_rate": 0.005, "l2": 0.08}
    model = build_rating_model(encoder.cardinalities(), small_config(**steps, **config), 3.0)
    model.fit(inputs, interactions["rating"].to_numpy(np.float32), epochs=3, batch_size=64, verbose=0)
    user_inputs = encoder.user_inputs(encoder.user_table(users))
    movie_inputs = encoder.movie_inputs(encoder.movie_table(movies))
    return model, user_inputs, movie_inputs


@pytest.mark.parametrize(
    "config",
    [
        {"features": ["user", "movie", "context"], "head_on": "features", "mlp_layers": []},  # the default
        {"features": ["user", "movie", "context"], "head_on": "towers", "mlp_layers": [8, 4]},
        {"features": ["user", "movie"], "head_on": "features", "mlp_layers": [6]},
        {"features": ["genres"], "head_on": "features", "mlp_layers": []},  # no user side: no product
        {"features": ["ids"], "head_on": "features", "mlp_layers": []},  # no head at all
    ],
)
def test_predictions_equal_the_models_own(tables, config):  # noqa: F811
    model, user_inputs, movie_inputs = _trained(tables, **config)
    assert (model.head is None) == (config["features"] == ["ids"])
    scorer = PrecomputedRating(model, user_inputs, movie_inputs, chunk=4)  # several chunks
    cached = len(scorer._contexts)  # the context of its check against the model, when the model reads one
    users, movies = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    users, movies = np.tile(users.ravel(), 2), np.tile(movies.ravel(), 2)
    for hour, weekday, month in [(3, 1, 2), (20, 6, 11)]:
        context = {"hour": np.array([hour]), "weekday": np.array([weekday]), "month": np.array([month])}
        features = {name: values[users] for name, values in user_inputs.items()}
        features |= {name: values[movies] for name, values in movie_inputs.items()}
        features |= {name: np.full(len(users), context[name][0]) for name in CONTEXT_FEATURES}
        expected = model({k: tf.constant(v) for k, v in features.items()}, training=False).numpy()
        got = scorer(users, movies, context)
        assert got.dtype == np.float32 and got.shape == (len(users),)
        np.testing.assert_allclose(got, expected, atol=2e-6)
    if "context" in config["features"]:  # the context moves the prediction, and each row is cached once
        assert len(scorer._contexts) == cached + 2
        assert not np.allclose(scorer(users, movies, {"hour": [3], "weekday": [1], "month": [2]}), got)


def test_a_head_it_cannot_run_is_refused(tables):  # noqa: F811
    model, user_inputs, movie_inputs = _trained(tables, mlp_layers=[4])
    model.head.layers[0].activation = tf.keras.activations.gelu
    with pytest.raises(TypeError, match="activation 'gelu'"):
        PrecomputedRating(model, user_inputs, movie_inputs)
    with pytest.raises(TypeError, match="TwoTowerRatingModel"):
        PrecomputedRating(object(), user_inputs, movie_inputs)


def test_misaligned_positions_are_refused(tables):  # noqa: F811
    scorer = PrecomputedRating(*_trained(tables))
    with pytest.raises(ValueError, match="3 user positions but 2 movie positions"):
        scorer(np.arange(3), np.arange(2), {"hour": [1], "weekday": [1], "month": [1]})
