"""Rating predictors that every learned model must beat, behind one fit/predict interface."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recsys.core.tables import require_columns
from recsys.data.rating_scale import RatingScale
from recsys.evaluation import metrics
from recsys.models.surprise_trainset import surprise_trainset

_REQUIRED_COLUMNS = ("user_id", "movie_id", "rating")


class NotFittedError(RuntimeError):
    """`predict` was called on a model that has not been fitted yet."""


@runtime_checkable
class RatingPredictor(Protocol):
    """What the rating protocol needs of a model: fit on a ratings table, predict one number per row."""

    name: str

    def fit(self, train: pd.DataFrame) -> RatingPredictor:
        """Learn from a table with columns user_id, movie_id, rating; return self."""
        ...

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return one float rating per row of `df` (columns user_id, movie_id), unclipped."""
        ...


def _train_ratings(train: pd.DataFrame, scale: RatingScale | None = None) -> np.ndarray:
    require_columns(train, _REQUIRED_COLUMNS, "train")
    if len(train) == 0:
        raise ValueError("train is empty; filter on split == 'train' before fitting")
    ratings = train["rating"].to_numpy(dtype=np.float64)
    if scale is not None and (ratings.min() < scale.low or ratings.max() > scale.high):
        raise ValueError(f"train ratings must lie in {scale.bounds}; found {ratings.min()}..{ratings.max()}")
    return ratings


class _Fitted:
    """Mixin: remember whether fit ran, so predict can fail with a clear message instead of an AttributeError."""

    _fitted = False

    def _check_fitted(self, df: pd.DataFrame) -> None:
        if not self._fitted:
            raise NotFittedError(f"{type(self).__name__}.predict was called before fit; call .fit(train) first")
        require_columns(df, ("user_id", "movie_id"), "the table to predict")


class RandomGuess(_Fitted):
    """A rating drawn uniformly from the scale's levels (1..5, or 0.5..5.0 in halves): the floor any model must clear.

    Each `predict` call starts from `seed`, so predicting the same table twice gives the same numbers.
    """

    name = "random_guess"

    def __init__(self, scale: RatingScale, seed: int = 42):
        self.scale, self.seed = scale, seed

    def fit(self, train: pd.DataFrame) -> RandomGuess:
        """Check the table's ratings lie on the scale; there is nothing to learn."""
        _train_ratings(train, self.scale)
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return len(df) seeded uniform draws from the scale's levels as floats."""
        self._check_fitted(df)
        rng = np.random.default_rng(self.seed)
        return rng.choice(self.scale.levels(), size=len(df)).astype(np.float64)


class RatingShareSampler(_Fitted):
    """A rating drawn from the train rating distribution: random, but knows that 4 stars is common and 1 is rare."""

    name = "weighted_sampling"

    def __init__(self, seed: int = 42):
        self.seed = seed

    def fit(self, train: pd.DataFrame) -> RatingShareSampler:
        """Learn the share of each rating level in train."""
        ratings = _train_ratings(train)
        levels, counts = np.unique(ratings, return_counts=True)
        self.rating_levels_ = levels
        self.rating_shares_ = counts / counts.sum()
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return len(df) seeded draws from the train rating distribution."""
        self._check_fitted(df)
        rng = np.random.default_rng(self.seed)
        return rng.choice(self.rating_levels_, size=len(df), p=self.rating_shares_).astype(np.float64)


class MajorityClass(_Fitted):
    """Always the most frequent train rating (the lower one on a tie): the best constant for accuracy, not RMSE."""

    name = "majority_class"

    def fit(self, train: pd.DataFrame) -> MajorityClass:
        """Find the most frequent train rating."""
        ratings = _train_ratings(train)
        levels, counts = np.unique(ratings, return_counts=True)
        self.majority_rating_ = float(levels[np.argmax(counts)])  # argmax takes the first, i.e. lowest, on ties
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return the majority rating for every row."""
        self._check_fitted(df)
        return np.full(len(df), self.majority_rating_)


class GlobalMean(_Fitted):
    """Always the mean train rating: the constant that minimises squared error, so the RMSE reference point."""

    name = "global_mean"

    def fit(self, train: pd.DataFrame) -> GlobalMean:
        """Compute the mean train rating."""
        self.global_mean_ = float(_train_ratings(train).mean())
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return the global mean for every row."""
        self._check_fitted(df)
        return np.full(len(df), self.global_mean_)


class BiasBaseline(_Fitted):
    """Koren's baseline predictor r̂ = μ + b_u + b_i: how much of the signal is just generous users and good movies.

    Fitted by alternating least squares: with the user biases fixed, each item bias has the closed form
    b_i = Σ_u (r_ui - μ - b_u) / (reg_item + n_i), then each user bias likewise with the item biases
    fixed; each half-step is one np.bincount. The regularisers shrink the biases of users and items with
    few ratings towards 0. Users or movies not seen in train get bias 0.

    Args:
        reg_user: shrinkage of user biases (acts like that many pseudo-ratings at the mean).
        reg_item: shrinkage of item biases.
        n_iters: alternating rounds (item step then user step); a handful converge.
    """

    name = "bias_baseline"

    def __init__(self, reg_user: float = 10.0, reg_item: float = 10.0, n_iters: int = 10):
        if reg_user < 0 or reg_item < 0:
            raise ValueError(f"regularisers must be >= 0, got reg_user={reg_user}, reg_item={reg_item}")
        if n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {n_iters}")
        self.reg_user = reg_user
        self.reg_item = reg_item
        self.n_iters = n_iters

    def fit(self, train: pd.DataFrame) -> BiasBaseline:
        """Estimate μ, then alternate the closed-form item and user bias updates `n_iters` times."""
        ratings = _train_ratings(train)
        user_idx, self.user_ids_ = pd.factorize(train["user_id"], sort=True)
        item_idx, self.item_ids_ = pd.factorize(train["movie_id"], sort=True)
        n_users, n_items = len(self.user_ids_), len(self.item_ids_)
        ratings_per_user = np.bincount(user_idx, minlength=n_users)
        ratings_per_item = np.bincount(item_idx, minlength=n_items)

        self.global_mean_ = float(ratings.mean())
        residuals = ratings - self.global_mean_
        user_bias = np.zeros(n_users)
        item_bias = np.zeros(n_items)
        for _ in range(self.n_iters):
            # Items first (Koren's order): movie effects are better estimated, with more ratings each.
            item_bias = np.bincount(item_idx, residuals - user_bias[user_idx], minlength=n_items) / (
                self.reg_item + ratings_per_item
            )
            user_bias = np.bincount(user_idx, residuals - item_bias[item_idx], minlength=n_users) / (
                self.reg_user + ratings_per_user
            )
        self.user_bias_ = user_bias
        self.item_bias_ = item_bias
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return μ + b_u + b_i per row; an unknown user or movie contributes 0."""
        self._check_fitted(df)
        return (
            self.global_mean_
            + _lookup(self.user_ids_, self.user_bias_, df["user_id"])
            + _lookup(self.item_ids_, self.item_bias_, df["movie_id"])
        )


def _lookup(known_ids: pd.Index, values: np.ndarray, ids: pd.Series) -> np.ndarray:
    """values[position of each id in known_ids], 0 where the id is unknown."""
    positions = known_ids.get_indexer(ids)
    return np.where(positions >= 0, values[positions], 0.0)


def _inner_ids(raw_to_inner: dict, raw_ids: pd.Series) -> np.ndarray:
    """Surprise's inner index of each raw id, -1 where the id was not in its trainset."""
    known_raw = pd.Index(list(raw_to_inner.keys()))
    inner = np.fromiter(raw_to_inner.values(), dtype=np.int64, count=len(raw_to_inner))
    positions = known_raw.get_indexer(raw_ids)
    return np.where(positions >= 0, inner[positions], -1)


class SurpriseSVD(_Fitted):
    """Biased matrix factorisation (Funk SVD) from scikit-surprise, the classic learned rating model.

    r̂ = μ + b_u + b_i + q_iᵀp_u, fitted by SGD. Predictions are computed with numpy from the fitted
    factors (Surprise's own per-pair `predict` loop is slow) and follow Surprise's rules for unknown
    ids: an unknown user or movie contributes no bias and no factor term. Predictions are not clipped;
    `metrics.rmse`/`mae` clip, as Surprise's `predict` would.

    Args:
        n_factors: latent dimensions.
        n_epochs: SGD passes over train.
        lr_all: SGD learning rate for all parameters.
        reg_all: L2 regularisation for all parameters.
        scale: the dataset's rating scale (Surprise's reader).
        seed: initialisation seed (Surprise's random_state).
    """

    name = "surprise_svd"

    def __init__(
        self,
        scale: RatingScale,
        n_factors: int = 100,
        n_epochs: int = 20,
        lr_all: float = 0.005,
        reg_all: float = 0.02,
        seed: int = 42,
    ):
        self.scale = scale
        self.n_factors = n_factors
        self.n_epochs = n_epochs
        self.lr_all = lr_all
        self.reg_all = reg_all
        self.seed = seed

    def fit(self, train: pd.DataFrame) -> SurpriseSVD:
        """Build a Surprise trainset from the table and run SGD."""
        from surprise import SVD  # imported here so the other baselines work without it

        _train_ratings(train, self.scale)
        self.trainset_ = surprise_trainset(train, self.scale.bounds)
        self.svd_ = SVD(
            n_factors=self.n_factors,
            n_epochs=self.n_epochs,
            lr_all=self.lr_all,
            reg_all=self.reg_all,
            random_state=self.seed,
        )
        self.svd_.fit(self.trainset_)
        self._fitted = True
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Return μ + b_u + b_i + q_iᵀp_u per row (unclipped), with Surprise's fallback for unknown ids."""
        self._check_fitted(df)
        user_inner = _inner_ids(self.trainset_._raw2inner_id_users, df["user_id"])
        item_inner = _inner_ids(self.trainset_._raw2inner_id_items, df["movie_id"])
        known_user = user_inner >= 0
        known_item = item_inner >= 0
        both_known = known_user & known_item
        estimates = np.full(len(df), float(self.trainset_.global_mean))
        estimates[known_user] += self.svd_.bu[user_inner[known_user]]
        estimates[known_item] += self.svd_.bi[item_inner[known_item]]
        estimates[both_known] += np.einsum(
            "ij,ij->i", self.svd_.pu[user_inner[both_known]], self.svd_.qi[item_inner[both_known]]
        )
        return estimates


def expand_grid(grid: list[dict] | dict[str, Any]) -> list[dict]:
    """A list of parameter dicts from either a list (kept as is) or a dict of value lists (cartesian product).

    A scalar value in the dict form is a fixed setting, so a YAML grid can mix `n_epochs: 20` with
    `n_factors: [50, 100]`.
    """
    if isinstance(grid, dict):
        names = list(grid)
        value_lists = [value if isinstance(value, (list, tuple)) else [value] for value in grid.values()]
        empty = [name for name, values in zip(names, value_lists) if len(values) == 0]
        if empty:
            raise ValueError(f"grid values for {empty} are empty lists; give at least one value each")
        points = [dict(zip(names, combination)) for combination in itertools.product(*value_lists)]
    elif isinstance(grid, (list, tuple)):
        points = [dict(point) for point in grid]
    else:
        raise TypeError(f"grid must be a list of dicts or a dict of lists, got {type(grid).__name__}")
    if not points:
        raise ValueError("the grid is empty; give at least one parameter setting")
    return points


def _fit_and_score(
    make_model: Callable[[dict], RatingPredictor],
    params: dict,
    train: pd.DataFrame,
    val: pd.DataFrame,
    scale: RatingScale,
) -> tuple[float, float]:
    model = make_model(params)
    started = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - started
    return metrics.rmse(val["rating"], model.predict(val), scale), fit_s


def tune_on_val(
    make_model: Callable[[dict], RatingPredictor],
    grid: list[dict] | dict[str, Any],
    train: pd.DataFrame,
    val: pd.DataFrame,
    scale: RatingScale,
    n_jobs: int = 1,
    keep_best: bool = False,
) -> tuple[dict, pd.DataFrame] | tuple[dict, pd.DataFrame, RatingPredictor]:
    """Choose hyper-parameters by validation RMSE; the test split is never looked at.

    Each grid point is fitted on `train` and scored on `val`; `protocol.select_refit_evaluate`
    refits the winner on train + val (or keeps its train fit) and scores it once on test.

    Args:
        make_model: builds an unfitted model from one parameter dict, e.g. `lambda p: SurpriseSVD(**p)`.
        grid: list of parameter dicts, or dict of value lists (expanded to their cartesian product).
        train: ratings to fit on.
        val: ratings to score on.
        scale: the dataset's rating scale (predictions are clipped to it).
        n_jobs: grid points fitted in parallel processes (joblib); 1 runs in this process. Each process
            gets its own copy of train, so memory grows with n_jobs.
        keep_best: also return the best point's model, fitted on train (the points are then fitted
            in this process, one model held at a time besides the best).

    Returns:
        (best parameter dict, table with one row per grid point: its parameters, rmse_val, fit_s),
        the table in grid order, and with `keep_best` the fitted best model. On equal RMSE the
        earlier grid point wins.
    """
    points = expand_grid(grid)
    require_columns(val, _REQUIRED_COLUMNS, "val")
    if keep_best:
        scores, best_model = [], None
        for params in points:
            model = make_model(params)
            rmse_val, fit_s = _fit_and_score(lambda _, built=model: built, params, train, val, scale)
            scores.append((rmse_val, fit_s))
            if best_row(pd.DataFrame(scores, columns=["rmse_val", "fit_s"])) == len(scores) - 1:
                best_model = model
            del model  # only the best so far stays alive
    elif n_jobs == 1 or len(points) == 1:
        scores = [_fit_and_score(make_model, params, train, val, scale) for params in points]
    else:
        from joblib import Parallel, delayed  # installed with scikit-surprise

        scores = Parallel(n_jobs=n_jobs)(
            delayed(_fit_and_score)(make_model, params, train, val, scale) for params in points
        )
    table = pd.DataFrame(points)
    table["rmse_val"] = [rmse_val for rmse_val, _ in scores]
    table["fit_s"] = [fit_s for _, fit_s in scores]
    best_params = points[best_row(table)]
    return (best_params, table, best_model) if keep_best else (best_params, table)


def best_row(tuning: pd.DataFrame) -> int:
    """Position of the lowest `rmse_val` (the earliest on ties; a NaN score, e.g. a diverged fit, never wins)."""
    scores = tuning["rmse_val"].to_numpy(dtype=float)
    if np.isnan(scores).all():
        raise ValueError("every grid point scored NaN on val: no setting to choose (did every fit diverge?)")
    return int(np.nanargmin(scores))


def evaluate_predictor(model: RatingPredictor, test: pd.DataFrame, scale: RatingScale) -> dict[str, float]:
    """Score a fitted model on held-out ratings with the project's one definition of RMSE and MAE.

    Args:
        model: a fitted RatingPredictor.
        test: ratings to score (columns user_id, movie_id, rating).
        scale: the dataset's rating scale.

    Returns:
        {"rmse", "mae"} (predictions clipped to the scale) and "predict_s", the wall time of predict.
    """
    require_columns(test, _REQUIRED_COLUMNS, "test")
    started = time.perf_counter()
    predictions = model.predict(test)
    predict_s = time.perf_counter() - started
    return {
        "rmse": metrics.rmse(test["rating"], predictions, scale),
        "mae": metrics.mae(test["rating"], predictions, scale),
        "predict_s": predict_s,
    }
