"""Gaussian noise on embeddings at prediction time only: exploration by perturbing the user's query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from recsys.retrieval.retrievers import NumpyRetriever


class PredictionNoise(tf.keras.layers.Layer):
    """Adds N(0, sigma^2) noise to its input when predicting, and nothing while training.

    Perturbing a user's embedding before retrieval moves the query a little at random, so the
    nearest movies change from request to request: the user sees movies just beyond their usual
    top-k without the model being retrained. Training stays noise-free (training=True is the
    identity), so the noise is purely an exploration knob on a fitted model.

    Draws come from a `tf.random.Generator` owned by the layer: every call draws new noise, and
    two layers built with the same seed produce the same sequence of draws. `reset()` restarts it.

    Args:
        sigma: standard deviation of the noise (in embedding units); 0 makes the layer the identity.
        seed: seeds the layer's generator; None draws one from numpy's global generator, which
            `recsys.core.seeding.set_seed` seeds, so a seeded notebook stays reproducible.
    """

    def __init__(self, sigma: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not sigma >= 0:
            raise ValueError(f"sigma must be a number >= 0, got {sigma}")
        self.sigma = float(sigma)
        if seed is None:  # draw one from the global generator, which set_seed seeds
            seed = int(np.random.randint(0, 2**31 - 1))  # noqa: NPY002
        self.seed = int(seed)
        self._generator = tf.random.Generator.from_seed(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the noise sequence (from the layer's seed, or from `seed`)."""
        self._generator.reset_from_seed(self.seed if seed is None else int(seed))

    def _noisy(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs + self.sigma * self._generator.normal(tf.shape(inputs), dtype=inputs.dtype)

    def call(self, inputs: tf.Tensor, training: bool | tf.Tensor | None = None) -> tf.Tensor:
        if self.sigma == 0 or training is True:
            return tf.identity(inputs)
        if training is None or training is False:  # Keras passes None at inference outside fit
            return self._noisy(inputs)
        return tf.cond(tf.cast(training, tf.bool), lambda: tf.identity(inputs), lambda: self._noisy(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "sigma": self.sigma, "seed": self.seed}


@dataclass(frozen=True)
class EmbeddingNoise:
    """N(0, sigma^2) noise on the user (or movie) vectors before retrieval (`PredictionNoise`), new draws per seed."""

    sigma: float
    target: str = "user"

    def __post_init__(self):
        if self.target not in ("user", "movie"):
            raise ValueError(f"noise target must be 'user' or 'movie', got {self.target!r}")

    def apply(self, user_vectors: np.ndarray, movie_vectors: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, movie vectors) with this noise, drawn from `seed`, on the target side."""
        layer = PredictionNoise(self.sigma, seed=seed)
        if self.target == "user":
            return layer(user_vectors, training=False).numpy(), movie_vectors
        return user_vectors, layer(movie_vectors, training=False).numpy()


def noisy_retriever(
    user_ids: Sequence[int],
    user_vectors: np.ndarray,
    movie_ids: Sequence[int],
    movie_vectors: np.ndarray,
    noise: EmbeddingNoise | None = None,
    seed: int = 0,
) -> NumpyRetriever:
    """Exact retrieval over a retriever's user and movie vectors, with `noise` (drawn from `seed`) on them first.

    The noisy retrieval of the exploration experiment and of the simulation's noise policy (rows of
    `user_vectors` aligned with `user_ids`, of `movie_vectors` with `movie_ids`).
    """
    if noise is not None:
        user_vectors, movie_vectors = noise.apply(user_vectors, movie_vectors, seed)
    return NumpyRetriever(user_ids, user_vectors, movie_ids, movie_vectors)
