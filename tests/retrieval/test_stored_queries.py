"""Every user's query vector computed once, and ids looked up to vectors: `recsys.retrieval.stored_queries`."""

import numpy as np
import pytest
import tensorflow as tf

from recsys.retrieval.stored_queries import query_model_vectors, vectors_of_users


class _QueryModel:
    """What a `UserQueryModel` offers: row_of_user, user_features and a call on ids (here: vector = 10 * row + 1)."""

    def __init__(self, user_ids):
        self.user_ids = np.asarray(user_ids)
        unknown = len(self.user_ids)
        rows = np.full(self.user_ids.max() + 1, unknown, np.int32)
        rows[self.user_ids] = np.arange(unknown)
        self.row_of_user = tf.Variable(rows)
        self.user_features = {"user_id": tf.Variable(np.arange(unknown + 1, dtype=np.int32))}
        self.calls = []

    def __call__(self, ids):
        ids = ids.numpy()
        self.calls.append(len(ids))
        rows = self.row_of_user.numpy()
        known = (ids >= 0) & (ids < len(rows))
        row = np.where(known, rows[np.clip(ids, 0, len(rows) - 1)], len(self.user_ids))
        return tf.constant(np.stack([10.0 * row + 1, -row], axis=1).astype(np.float32))


def test_every_known_user_and_the_unknown_user_get_their_vector_once():
    model = _QueryModel([7, 2, 5])
    rows, vectors = query_model_vectors(model)
    assert vectors.shape == (4, 2) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[:, 0], [1, 11, 21, 31])  # users 7, 2, 5, then the unknown row
    assert model.calls == [1, 3]  # the unknown id, then every known user in one call
    got = vectors_of_users(np.array([2, 7, 5, 3, 99, -1]), rows, vectors)
    np.testing.assert_array_equal(got, model(tf.constant([2, 7, 5, 3, 99, -1])).numpy())
    np.testing.assert_array_equal(vectors_of_users(tf.constant([5], tf.int32), rows, vectors), vectors[[2]])


@pytest.mark.parametrize("queries", [np.zeros((1, 2), np.float32), np.array([1.0, 2.0]), np.zeros((2, 2), np.int64)])
def test_anything_but_a_1d_batch_of_integer_ids_is_refused(queries):
    rows, vectors = query_model_vectors(_QueryModel([1, 2]))
    with pytest.raises(ValueError, match="1-d batch of integer user ids"):
        vectors_of_users(queries, rows, vectors)
