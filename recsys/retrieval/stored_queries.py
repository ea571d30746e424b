"""Every user's query vector computed once from a `UserQueryModel`, and user ids looked up to vectors in numpy.

An index that takes MovieLens user ids runs its query model (the user tower) at every call. The
user tower reads only the user's features, which do not change while a run is served, so
serving indexes compute every user's vector once (`query_model_vectors`) and a request is a
numpy lookup (`vectors_of_users`): the FAISS indexes store the vectors with the index; a
reloaded ScaNN index computes them from the query model saved inside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

_QUERY_BATCH = 8192  # users per call of the query model when the user vectors are computed


def query_model_vectors(query_model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every user's query vector from a `UserQueryModel` (live or reloaded), computed once: (row_of_user, user_vectors).

    `user_vectors` holds the vector of each user the query model knows at the row the query
    model gives them, and the unknown user's (an id it does not know) in its last row;
    `row_of_user[user_id]` is the user's row (the last row for an id without features). The
    vectors come from calling the query model on the ids, as a TFRS index does.
    """
    row_of_user = np.asarray(query_model.row_of_user.numpy(), np.int32)
    unknown_row = int(query_model.user_features["user_id"].shape[0]) - 1
    user_ids = np.flatnonzero(row_of_user < unknown_row).astype(np.int32)
    unknown = query_model(tf.constant([-1], tf.int32)).numpy()
    vectors = np.empty((unknown_row + 1, unknown.shape[1]), np.float32)
    vectors[unknown_row] = unknown[0]
    for start in range(0, len(user_ids), _QUERY_BATCH):
        chunk = user_ids[start : start + _QUERY_BATCH]
        vectors[row_of_user[chunk]] = query_model(tf.constant(chunk)).numpy()
    return row_of_user, vectors


def as_numpy(queries: Any) -> np.ndarray:
    """A batch of queries (a tensor, an array or a list) as a numpy array."""
    return np.asarray(queries.numpy() if hasattr(queries, "numpy") else queries)


def vectors_of_users(queries: Any, row_of_user: np.ndarray, user_vectors: np.ndarray) -> np.ndarray:
    """The stored vectors of a 1-d batch of user ids (a tensor or an array); an id without a row gets the unknown user's.

    Raises:
        ValueError: `queries` is not a 1-d batch of integer ids.
    """
    ids = as_numpy(queries)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"this index takes a 1-d batch of integer user ids, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    known = (ids >= 0) & (ids < len(row_of_user))
    return user_vectors[np.where(known, row_of_user[np.clip(ids, 0, len(row_of_user) - 1)], len(user_vectors) - 1)]
