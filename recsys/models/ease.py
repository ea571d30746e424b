"""EASE (Steck 2019): a closed-form item-item retrieval model, the strong non-neural baseline for full ranking."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from recsys.core.io import atomic_dir
from recsys.evaluation import metrics
from recsys.evaluation.score_blocks import RowScores, top_k_in_blocks
from recsys.features.fit_records import FitRecord, matrix_fingerprint


def _gram(X: sp.spmatrix) -> np.ndarray:
    """Dense XᵀX in float64 (item co-occurrence counts), the only part of EASE that depends on the data."""
    if not sp.issparse(X):
        raise TypeError(
            f"X must be a scipy.sparse users x items matrix (see metrics.build_interaction_matrix), "
            f"got {type(X).__name__}"
        )
    X = sp.csr_matrix(X, dtype=np.float64)
    return (X.T @ X).toarray()


def _ease_weights(gram: np.ndarray, l2: float, overwrite: bool = False) -> np.ndarray:
    """B = I - P / diag(P) with P = (G + λI)⁻¹, i.e. B_ij = -P_ij / P_jj off the diagonal and 0 on it.

    Memory: one copy of G in its dtype, inverted and scaled in place, then B in float32 (for 20,000
    items in float64: 3.2 GB beside G's own 3.2 GB, and 1.6 GB for B), as `tune_ease` needs (it
    reuses G for every λ). With `overwrite`, G itself (C-ordered) is inverted in place and no copy
    is made (`EASE.fit`, float64 G: B is its 1.6 GB; `EaseRefitter`, float32 G: B is G's own memory).
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it makes XᵀX + λI invertible), got {l2}")
    regularised = gram if overwrite else gram.copy()
    regularised[np.diag_indices_from(regularised)] += l2
    # G + λI is symmetric positive definite: a Cholesky-based inverse is about twice as fast as LU.
    # B in C order: scipy's sparse @ dense and the per-request row sums read B by rows (a
    # Fortran-ordered B would be copied on every product). P is exactly symmetric (`_spd_inverse`
    # mirrors one triangle), so its transpose is P itself in C order: scaling that view column-wise
    # gives that B without a reordering copy.
    precision = _spd_inverse(regularised).T
    diagonal = np.diag(precision).copy()
    precision /= -diagonal
    np.fill_diagonal(precision, 0.0)
    return precision.astype(np.float32, order="C", copy=False)


LAPACK_DOUBLE = (scipy.linalg.lapack.dpotrf, scipy.linalg.lapack.dpotri)


def _spd_inverse(matrix: np.ndarray, block: int = 512) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via LAPACK potrf/potri (overwrites `matrix`), in its dtype.

    The transpose of a C-ordered symmetric matrix is the same matrix in Fortran order, which LAPACK
    overwrites without a copy (a matrix in another layout is copied once); potri fills one
    triangle, mirrored here a block of columns at a time (blocks of 512 keep the diagonal blocks'
    temporaries small: about 0.1 s less than 2,048 for ML-1M's 3.7k items). Returns a Fortran-ordered
    array, exactly symmetric.
    """
    work = matrix.T  # Fortran-ordered view: potrf and potri work in place
    single = matrix.dtype == np.float32  # float32 halves the time (ML-1M's 3.7k items: 0.3 s against 0.75 s)
    potrf, potri = (scipy.linalg.lapack.spotrf, scipy.linalg.lapack.spotri) if single else LAPACK_DOUBLE
    factor, info = potrf(work, lower=True, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"XᵀX + λI is not positive definite (LAPACK potrf info={info}); check X for NaN or negative entries"
        )
    inverse, info = potri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed (LAPACK potri info={info})")
    # potri filled the lower triangle (row >= column); copy it to the upper one without a full-size temporary
    for start in range(0, len(inverse), block):
        stop = min(start + block, len(inverse))
        inverse[:start, start:stop] = inverse[start:stop, :start].T
        diagonal_block = inverse[start:stop, start:stop]
        inverse[start:stop, start:stop] = np.tril(diagonal_block) + np.tril(diagonal_block, -1).T
    return inverse


class EaseRefitter:
    """EASE's B refitted, again and again, on a matrix that only grows from a fixed start (the simulation's logs).

    XᵀX of the start is computed once; for a grown matrix X = S + A (A: the added entries) it is
    SᵀS + SᵀA + AᵀS + AᵀA, a few sparse products over the added entries instead of the whole
    matrix, and the same counts exactly. The inverse is taken in float32 (about twice as fast as
    float64; B is stored in float32 anyway), so B agrees with `EASE.fit` to float32 rounding.

    Args:
        start: binary (n_users, n_items) sparse matrix every refitted matrix grows from.
        l2: λ.
    """

    def __init__(self, start: sp.spmatrix, l2: float):
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.start = sp.csr_matrix(start, dtype=np.float32)
        self.l2 = l2
        self._gram = _gram(self.start).astype(np.float32)  # counts, exact in float32 below 2**24 users

    def weights(self, X: sp.spmatrix) -> np.ndarray:
        """(n_items, n_items) float32 B of the grown matrix X (every entry of the start still in it).

        The added products are sparse (a round adds a few thousand entries) and are added into a
        copy of the start's XᵀX where they are nonzero; every term is a count, exact in float32, so
        the order of the sums does not change G.
        """
        added = (sp.csr_matrix(X, dtype=np.float32) - self.start).tocsr()
        added.eliminate_zeros()
        if added.shape != self.start.shape or (added.data < 0).any():
            raise ValueError("X must be the start matrix with entries added (same shape, none removed)")
        gram = self._gram.copy()
        cross = (self.start.T @ added).tocoo()  # SᵀA (a sparse product: no repeated entry); AᵀS is its transpose
        gram[cross.row, cross.col] += cross.data
        gram[cross.col, cross.row] += cross.data
        own = (added.T @ added).tocoo()
        gram[own.row, own.col] += own.data
        return _ease_weights(gram, self.l2, overwrite=True)


class EASE:
    """Embarrassingly Shallow Autoencoder: predicts each item from all others with one item x item matrix B.

    B minimises ||X - XB||² + λ||B||² subject to diag(B) = 0 (so an item cannot explain itself) and
    has a closed form, so there is no training loop and no seed: with G = XᵀX + λI and P = G⁻¹,
    B = -P / diag(P) column-wise and diag(B) = 0. Cost is one dense n_items x n_items inverse
    (about 3.7k items for ML-1M: a few seconds).

    The inverse is what bounds EASE: ML-25M's 62,423 movies would need a 62k x 62k matrix (15.6 GB
    in float32, 31 GB in float64 while inverting). With `max_items`, B covers only the most-watched
    movies (`most_interacted_columns`): the rest are never proposed by EASE (score -inf) and other
    retrievers cover them (report the share of the held-out movies B covers next to its metrics).

    Args:
        l2: λ, the L2 penalty on B; larger values shrink towards popularity. Steck uses a few hundred
            for MovieLens-sized data.
        max_items: the most items B covers; 0 covers every item.
    """

    def __init__(self, l2: float = 500.0, max_items: int = 0):
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        _check_max_items(max_items)
        self.l2 = l2
        self.max_items = max_items

    def fit(self, X: sp.spmatrix) -> EASE:
        """Compute B from the users x items interaction matrix X (binary train interactions).

        Args:
            X: (n_users, n_items) sparse; nonzero = interacted.

        Returns:
            self, with `columns_` (the item columns B covers, ascending), `weights_`
            ((n_covered, n_covered) float32 B), `n_items_`, `fit_s` and `fitted_matrix_` (X itself, by
            reference: `save_ease` records its fingerprint, `fit_records.matrix_fingerprint`).
        """
        started = time.perf_counter()
        if not sp.issparse(X):
            raise TypeError(f"X must be a scipy.sparse users x items matrix, got {type(X).__name__}")
        self.columns_ = most_interacted_columns(X, self.max_items)
        self.n_items_ = X.shape[1]
        self.fitted_matrix_ = X
        # G is this call's own: inverted in place, without the float64 copy (3.2 GB for 20,000 items)
        self.weights_ = _ease_weights(_gram(sp.csr_matrix(X)[:, self.columns_]), self.l2, overwrite=True)
        self.fit_s = time.perf_counter() - started
        return self

    def score(self, X_users: sp.spmatrix) -> np.ndarray:
        """Scores X_users @ B for every item; nothing is excluded here (pass the seen items to top_k_from_scores).

        Args:
            X_users: (n, n_items) sparse interactions of the users to score, same item indexing as fit.

        Returns:
            (n, n_items) float32 dense scores; -inf for the items B does not cover (see max_items).
        """
        if not hasattr(self, "weights_"):
            raise RuntimeError("EASE.score was called before fit; call .fit(X_train) first")
        if not sp.issparse(X_users):
            raise TypeError(f"X_users must be a scipy.sparse matrix, got {type(X_users).__name__}")
        if X_users.shape[1] != self.n_items_:
            raise ValueError(
                f"X_users has {X_users.shape[1]} item columns but the model was fitted on "
                f"{self.n_items_}; use the same item index for both"
            )
        return _covered_scores(X_users, self.weights_, self.columns_, self.n_items_)

    def row_scores(self, X_users: sp.spmatrix) -> RowScores:
        """The scores of `score`, computed a block of users at a time (for full-ranking evaluation)."""
        X_users = sp.csr_matrix(X_users)
        return RowScores((X_users.shape[0], self.n_items_), lambda rows: self.score(X_users[rows]))


def most_interacted_columns(X: sp.spmatrix, max_items: int) -> np.ndarray:
    """The columns of the `max_items` items with the most interactions (ties: the lower column), ascending.

    Every column when `max_items` is 0 or at least the number of items.
    """
    _check_max_items(max_items)
    counts = np.asarray(X.sum(axis=0)).ravel()
    if max_items == 0 or max_items >= len(counts):
        return np.arange(len(counts))
    return np.sort(np.lexsort((np.arange(len(counts)), -counts))[:max_items])


def _check_max_items(max_items: int) -> None:
    if isinstance(max_items, bool) or not isinstance(max_items, int | np.integer) or max_items < 0:
        raise ValueError(f"max_items must be an integer >= 0 (0: every item), got {max_items!r}")


def _covered_scores(X_users: sp.spmatrix, weights: np.ndarray, columns: np.ndarray, n_items: int) -> np.ndarray:
    """X_users[:, columns] @ B placed in the item columns it covers; -inf in the others."""
    X_users = sp.csr_matrix(X_users, dtype=np.float32)
    if len(columns) == n_items:
        return np.asarray(X_users @ weights)
    scores = np.full((X_users.shape[0], n_items), -np.inf, np.float32)
    scores[:, columns] = X_users[:, columns] @ weights
    return scores


def tune_ease(
    X_train: sp.spmatrix,
    X_val_relevant: sp.spmatrix,
    l2_grid: Iterable[float],
    k: int = 10,
    metric: str = "recall",
    max_items: int = 0,
) -> tuple[float, pd.DataFrame]:
    """Choose λ by a validation ranking metric, with full ranking and train items excluded.

    XᵀX is computed once and reused for every λ; only the inverse is redone.

    Args:
        X_train: (n_users, n_items) train interactions, used both to fit and as each user's history.
        X_val_relevant: (n_users, n_items) val interactions, the held-out items; users without any are skipped.
        l2_grid: λ values to try.
        k: list length of the selection metric.
        metric: "recall", "ndcg" or "hit_rate"; λ maximising `<metric>_at_<k>` wins (the smaller λ on a tie).
        max_items: as EASE's: B covers the most-watched items only; the metric still counts every
            held-out item (one outside B is a miss).

    Returns:
        (EASE fitted on X_train with the best λ, as `EASE(best λ, max_items).fit(X_train)` would be
        without a second inverse; table with one row per λ: l2, recall/ndcg/hit_rate at k,
        n_users_evaluated, fit_s).
    """
    if metric not in ("recall", "ndcg", "hit_rate"):
        raise ValueError(f"metric must be 'recall', 'ndcg' or 'hit_rate', got {metric!r}")
    l2_values = sorted(float(l2) for l2 in l2_grid)
    if not l2_values:
        raise ValueError("l2_grid is empty; give at least one λ, e.g. [100, 250, 500, 1000]")
    if X_train.shape != X_val_relevant.shape:
        raise ValueError(
            f"X_train {X_train.shape} and X_val_relevant {X_val_relevant.shape} must have the same users and items"
        )
    X_train = sp.csr_matrix(X_train)
    columns = most_interacted_columns(X_train, max_items)
    gram = _gram(X_train[:, columns])
    # Only users with a val item can be evaluated; scoring the rest would only cost memory.
    val_users = np.flatnonzero(np.diff(sp.csr_matrix(X_val_relevant).indptr) > 0)
    history = X_train[val_users]
    held_out = sp.csr_matrix(X_val_relevant)[val_users]
    n_items = X_train.shape[1]
    rows, best, best_score = [], None, None
    for l2 in l2_values:
        started = time.perf_counter()
        model = EASE(l2, max_items)
        model.columns_, model.n_items_, model.weights_ = columns, n_items, _ease_weights(gram, l2)
        model.fitted_matrix_ = X_train
        model.fit_s = time.perf_counter() - started
        top_items = top_k_in_blocks(model.row_scores(history), k, exclude=history)
        rows.append({"l2": l2, **metrics.retrieval_metrics(top_items, held_out, ks=(k,)), "fit_s": model.fit_s})
        if best is None or rows[-1][f"{metric}_at_{k}"] > best_score:  # strictly better: the smaller λ on a tie
            best, best_score = model, rows[-1][f"{metric}_at_{k}"]
        del model
    return best, pd.DataFrame(rows)


def save_ease(
    model: EASE, movie_ids: np.ndarray, folder: str | os.PathLike, fitted_on: Sequence[str] | None = None
) -> Path:
    """Save a fitted EASE (B as .npy, its λ, its item order, the record of what it was fitted on), atomically.

    The record (`fit_records.FitRecord`) is the fingerprint of the matrix `fit` (or `tune_ease`) was
    given, so what EASE was fitted on is told by the data: the learned ranker matches it to the
    run's splits and refuses a label that disagrees (`ranker_features.checked_fitted_on`).

    Args:
        movie_ids: the movie id of each item column of the matrix EASE was fitted on; the ids of
            the columns B covers are saved (all of them without max_items).
        fitted_on: the splits the caller says it was fitted on (e.g. ("train",)), saved as a label
            that the record must agree with; None saves none.
    """
    if len(movie_ids) != model.n_items_:
        raise ValueError(f"{len(movie_ids)} movie ids for an EASE fitted on {model.n_items_} item columns")
    matrix = getattr(model, "fitted_matrix_", None)
    record = matrix_fingerprint(matrix, movie_ids) if matrix is not None else getattr(model, "fit_record", None)
    meta = {
        "l2": model.l2,
        "fitted_on": None if fitted_on is None else list(fitted_on),
        "fit_record": None if record is None else record.to_dict(),
    }
    with atomic_dir(folder) as tmp:
        np.save(tmp / "weights.npy", model.weights_)
        np.save(tmp / "movie_ids.npy", np.asarray(movie_ids)[model.columns_])
        (tmp / "ease.json").write_text(json.dumps(meta))
    return Path(folder)


def load_ease(folder: str | os.PathLike) -> tuple[EASE, np.ndarray, tuple[str, ...] | None]:
    """(the fitted EASE, the movie id of each of its columns, its label: the splits it was saved as fitted on).

    The model carries `fit_record`, the fingerprint of what it was fitted on (None for a model
    saved before records were kept).
    """
    folder = Path(folder)
    if not (folder / "ease.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved EASE model (ease.json missing): save one with save_ease")
    meta = json.loads((folder / "ease.json").read_text())
    model = EASE(meta["l2"])
    model.weights_ = np.load(folder / "weights.npy")
    # its item columns are now the movies it covers, in the order of the saved ids
    model.n_items_ = len(model.weights_)
    model.columns_ = np.arange(model.n_items_)
    model.fit_record = FitRecord.from_dict(meta.get("fit_record"))
    label = meta.get("fitted_on")
    return model, np.load(folder / "movie_ids.npy"), None if label is None else tuple(label)
