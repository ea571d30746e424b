"""Users x catalogue scores one block of users at a time, and the top-k lists built from them.

Full-ranking evaluation scores every movie for every user. At ML-1M's size the whole matrix is
small (6k x 3.7k), but at ML-25M's it is 162k x 62k float32 = 40 GB, more than the machine has.
Everything that ranks the whole catalogue therefore takes a score matrix it can index by a block
of rows (`scores[start:stop]`): a numpy array, a read-only broadcast view (popularity), or a
`RowScores` that computes only the rows asked for (a dot product of vectors, EASE on a block of
histories). The lists are the same as from the whole matrix: each row is ranked on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from recsys.evaluation import metrics

# Users scored at once: 1,024 x 62,423 movies is 256 MB of float32 (and twice that while ranking).
BLOCK_USERS = 1024


class RowScores:
    """A users x movies score matrix that computes a block of rows when indexed (`scores[a:b]`).

    Args:
        shape: (n_users, n_movies).
        score_rows: rows (a slice or an index array) -> their (n, n_movies) dense scores.
    """

    def __init__(self, shape: tuple[int, int], score_rows: Callable[[slice | np.ndarray], np.ndarray]):
        self.shape = (int(shape[0]), int(shape[1]))
        self._score_rows = score_rows

    @classmethod
    def dot(cls, queries: np.ndarray, candidates: np.ndarray) -> RowScores:
        """Scores as dot products of query vectors (rows) and candidate vectors (columns)."""
        return cls((len(queries), len(candidates)), lambda rows: queries[rows] @ candidates.T)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        block = np.asarray(self._score_rows(rows))
        if block.ndim != 2 or block.shape[1] != self.shape[1]:
            raise ValueError(f"the scores of a block must be (rows, {self.shape[1]}), got {block.shape}")
        return block


def top_k_in_blocks(
    scores: np.ndarray | RowScores,
    k: int,
    exclude: sp.spmatrix | None = None,
    block: int = BLOCK_USERS,
    with_scores: bool = False,
    rows: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`metrics.top_k_from_scores` over the rows of `scores`, `block` rows at a time.

    Args:
        scores: (n_users, n_items), indexable by a slice of rows.
        k: list length.
        exclude: optional (n_users, n_items) sparse matrix of items a user must not get.
        block: rows scored at once; the lists do not depend on it.
        with_scores: also return the scores of the listed items.
        rows: rank only these rows (e.g. the users with held-out items), in this order.

    Returns:
        (n_users, k) int64 item indices, best first (ties to the lower index), as top_k_from_scores
        (one row per `rows` when given); with `with_scores`, also their float32 scores.
    """
    n_users, n_items = scores.shape
    if block < 1:
        raise ValueError(f"block must be at least 1 row, got {block}")
    if rows is not None:
        rows = np.asarray(rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= n_users):
            raise ValueError(f"rows must be row numbers 0..{n_users - 1} of the scores, got {rows.min()}..{rows.max()}")
    if exclude is not None:
        if exclude.shape != (n_users, n_items):
            raise ValueError(f"exclude has shape {exclude.shape}, the scores {scores.shape}")
        exclude = sp.csr_matrix(exclude)
    n_out = n_users if rows is None else len(rows)
    top = np.empty((n_out, k), np.int64)
    top_scores = np.empty((n_out, k), np.float32) if with_scores else None
    for out in _blocks(n_out, block):
        part = out if rows is None else np.asarray(rows[out])
        dense = scores[part]
        top[out] = metrics.top_k_from_scores(dense, k, exclude=None if exclude is None else exclude[part])
        if top_scores is not None:
            top_scores[out] = np.take_along_axis(dense, top[out], axis=1)
    return top if top_scores is None else (top, top_scores)


def _blocks(n: int, block: int) -> list[slice]:
    """Consecutive row slices of at most `block` rows; a last block of one row joins the one before.

    A one-row product runs as a matrix-vector product in BLAS, whose sums can differ from the
    matrix-matrix product's in the last bit and so flip a near tie: no block is a single row.
    """
    starts = list(range(0, n, block))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]
