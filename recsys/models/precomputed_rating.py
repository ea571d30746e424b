"""The rating model served from precomputed towers: every user's and movie's tower output once, the rest in numpy.

A served request scores about 130 (user, movie) pairs. Through TensorFlow that is one graph call
of about 0.8 ms on ml-1m-half, most of it the call itself and the towers re-reading the same
user's features for every pair. A tower's output depends only on its user (or movie), so
`PrecomputedRating` runs the model's own towers once over every user and movie of the store,
and a request is then a gather, a dot product and the head: a few small numpy products
(about 0.09 ms). The head is read from the model's Dense layers, so a change to the model's
head that this module does not know (another layer type, another activation) raises instead of
scoring differently.

Hand-written on purpose: no library runs half a Keras model in numpy, and the saving is the
TensorFlow call itself, which no graph option removes. Results match the model's own call to
float32 rounding (tests/models/test_precomputed_rating.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from recsys.features.encoding import CONTEXT_FEATURES
from recsys.models.rating_model import TwoTowerRatingModel

# Rows per tower call when the tables are built, and per head product when many pairs are scored.
CHUNK = 65_536

_ACTIVATIONS = {"linear": lambda x: x, "relu": lambda x: np.maximum(x, 0)}


def _tower_tables(tower, inputs: Mapping[str, np.ndarray], chunk: int) -> dict[str, np.ndarray | None]:
    """The tower's vector, side vector (None without side features) and bias of every row of `inputs`."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list] = {"vector": [], "side_vector": [], "bias": []}
    for start in range(0, n, chunk):
        out = tower({name: tf.constant(values[start : start + chunk]) for name, values in inputs.items()})
        parts["vector"].append(out.vector.numpy())
        parts["bias"].append(out.bias.numpy())
        if out.side_vector is not None:
            parts["side_vector"].append(out.side_vector.numpy())
    return {name: np.concatenate(rows).astype(np.float32) if rows else None for name, rows in parts.items()}


def _dense_layers(head: tf.keras.Sequential) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(kernel, bias, activation) of each Dense layer of the head; Dropout does nothing at inference."""
    layers = []
    for layer in head.layers:
        if isinstance(layer, tf.keras.layers.Dropout):
            continue
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if not isinstance(layer, tf.keras.layers.Dense) or activation not in _ACTIVATIONS:
            raise TypeError(
                f"the rating model's head has a {type(layer).__name__} layer (activation {activation!r}): "
                f"PrecomputedRating runs Dense layers with {sorted(_ACTIVATIONS)} only; score it with the model instead"
            )
        weights = layer.get_weights()
        bias = weights[1] if layer.use_bias else np.zeros(layer.units)
        layers.append((weights[0].astype(np.float32), bias.astype(np.float32), activation))
    return layers


class PrecomputedRating:
    """A TwoTowerRatingModel's predicted ratings of (user, movie) positions, from tower tables built once.

    Args:
        model: the rating model (its towers, biases, context encoder and head are read once; later
            training of the model is not seen).
        user_inputs, movie_inputs: the encoded inputs of every user and every movie, rows in
            position order (`FeatureStore.user_inputs` / `movie_inputs` of all positions).
        chunk: rows per tower call and per head product.
    """

    def __init__(
        self,
        model: TwoTowerRatingModel,
        user_inputs: Mapping[str, np.ndarray],
        movie_inputs: Mapping[str, np.ndarray],
        chunk: int = CHUNK,
    ):
        if not isinstance(model, TwoTowerRatingModel):
            raise TypeError(f"PrecomputedRating serves a TwoTowerRatingModel, got {type(model).__name__}")
        self.model, self.chunk = model, chunk
        # one call of the model itself: builds a reloaded model's layers (their weights are restored when
        # first built), and gives a prediction the tables must reproduce
        example = {name: np.asarray(values[:1]) for name, values in (*user_inputs.items(), *movie_inputs.items())}
        context = {name: np.zeros(1, np.int32) for name in CONTEXT_FEATURES}
        expected = model({name: tf.constant(v) for name, v in {**example, **context}.items()}, training=False)
        self.global_mean = np.float32(model.global_mean)
        self.head_on = model.config.head_on
        self.users = _tower_tables(model.user_tower, user_inputs, chunk)
        self.movies = _tower_tables(model.movie_tower, movie_inputs, chunk)
        self.head = _dense_layers(model.head) if model.head is not None else None
        self._contexts: dict[tuple, np.ndarray] = {}
        got = self(np.zeros(1, np.int64), np.zeros(1, np.int64), context)
        if not np.allclose(got, expected.numpy().reshape(-1), atol=1e-4):
            raise RuntimeError(
                f"PrecomputedRating gives {got[0]:.6f} where the model gives {float(expected[0]):.6f} for the first "
                "user and movie: the model's forward pass has changed; update recsys/models/precomputed_rating.py"
            )

    def context_vector(self, context_row: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The context encoder's (1, width) output for one encoded context row (cached per row), or None."""
        if self.model.context is None:
            return None
        key = tuple(sorted((name, int(np.asarray(value).reshape(-1)[0])) for name, value in context_row.items()))
        if key not in self._contexts:
            features = {
                name: tf.constant(np.asarray(value, np.int32).reshape(-1)[:1]) for name, value in context_row.items()
            }
            self._contexts[key] = self.model.context(features).numpy().astype(np.float32)
        return self._contexts[key]

    def _head_inputs(self, users: np.ndarray, movies: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        """What the model's `_head_inputs` concatenates, for these rows."""
        if self.head_on == "towers":
            user, movie = self.users["vector"][users], self.movies["vector"][movies]
            parts = [user, movie, user * movie]
        else:
            user_side, movie_side = self.users["side_vector"], self.movies["side_vector"]
            parts = [table[rows] for table, rows in ((user_side, users), (movie_side, movies)) if table is not None]
            if len(parts) == 2:
                parts.append(parts[0] * parts[1])
        if context is not None:
            parts.append(np.broadcast_to(context, (len(users), context.shape[1])))
        return np.concatenate(parts, axis=1)

    def _predict(self, users: np.ndarray, movies: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        dot = np.einsum("ij,ij->i", self.users["vector"][users], self.movies["vector"][movies])
        prediction = self.global_mean + self.users["bias"][users] + self.movies["bias"][movies] + dot
        if self.head is not None:
            hidden = self._head_inputs(users, movies, context)
            for kernel, bias, activation in self.head:
                hidden = _ACTIVATIONS[activation](hidden @ kernel + bias)
            prediction += hidden[:, 0]
        return prediction.astype(np.float32)

    def __call__(
        self,
        user_positions: np.ndarray,
        movie_positions: np.ndarray,
        context_row: Mapping[str, np.ndarray],
        chunk: int | None = None,
    ) -> np.ndarray:
        """Unclipped predicted ratings (float32) of aligned user and movie positions in one encoded context.

        `chunk` rows per head product (None: the scorer's own).
        """
        users, movies = np.asarray(user_positions, np.int64), np.asarray(movie_positions, np.int64)
        if users.shape != movies.shape:
            raise ValueError(f"{len(users)} user positions but {len(movies)} movie positions: align them")
        context = self.context_vector(context_row)
        chunk = chunk or self.chunk
        predicted = np.empty(len(users), np.float32)
        for start in range(0, len(users), chunk):
            part = slice(start, start + chunk)
            predicted[part] = self._predict(users[part], movies[part], context)
        return predicted
