"""The sequential model's query for one ad-hoc history, in numpy: a "what next?" request without a TensorFlow call.

`recommend_for_history` reads one short history per request. Through TensorFlow its query is a
GRU loop in a graph, about 1.5 ms for 10 movies on ml-1m-half, nearly all of it per-step op
overhead for a 1-row batch; the same arithmetic in numpy is about 0.1 ms. `SingleHistoryQuery`
reads the model's weights once and runs its query (embedding, GRU, projection, L2
normalisation) for one history. Batches of users still go through the model
(`sequential_model.query_vectors`), where TensorFlow is the faster of the two.

Hand-written on purpose: no library runs a Keras GRU in numpy. It covers the GRU the model
builds (tanh, sigmoid, reset_after, with biases) and raises for any other, and it checks itself
against the model once when built (tests/models/test_sequential.py compares the two).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recsys.features.sequences import PAD


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SingleHistoryQuery:
    """One history (model indices, oldest first, no PAD) -> the model's (dim,) L2-normalised query.

    Args:
        model: a SequentialRetrievalModel; its weights are read once (later training is not seen).
    """

    def __init__(self, model):
        cell = model.gru.cell
        if not (
            cell.reset_after
            and cell.use_bias
            and cell.activation is tf.keras.activations.tanh
            and cell.recurrent_activation is tf.keras.activations.sigmoid
        ):
            raise TypeError("SingleHistoryQuery runs a GRU with tanh, sigmoid, reset_after and biases only")
        probe = np.arange(1, min(model.n_movies, 3) + 1, dtype=np.int32)
        expected = model.query(tf.constant(probe[None, :]))[0].numpy()  # builds a reloaded model's layers
        self.embeddings = model.history_embedding.embeddings.numpy()
        self.kernel, self.recurrent_kernel = cell.kernel.numpy(), cell.recurrent_kernel.numpy()
        self.input_bias, self.recurrent_bias = cell.bias.numpy()
        self.projection_kernel, self.projection_bias = (w.numpy() for w in model.projection.weights)
        self.units = cell.units
        got = self(probe)
        if not np.allclose(got, expected, atol=1e-5):
            raise RuntimeError(
                "SingleHistoryQuery disagrees with the model's query (max difference "
                f"{np.abs(got - expected).max():.2e}): update recsys/models/single_history_query.py"
            )

    def __call__(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, np.int64).ravel()
        if not len(items) or (items == PAD).any():
            raise ValueError("a history query needs at least one movie and no PAD slot")
        units = self.units
        inputs = self.embeddings[items] @ self.kernel + self.input_bias  # every step's input part at once
        state = np.zeros(units, np.float32)
        for step in inputs:
            inner = state @ self.recurrent_kernel + self.recurrent_bias
            update = _sigmoid(step[:units] + inner[:units])
            reset = _sigmoid(step[units : 2 * units] + inner[units : 2 * units])
            candidate = np.tanh(step[2 * units :] + reset * inner[2 * units :])
            state = update * state + (1 - update) * candidate
        query = state @ self.projection_kernel + self.projection_bias
        return (query / np.sqrt(max(float(query @ query), 1e-12))).astype(np.float32)
