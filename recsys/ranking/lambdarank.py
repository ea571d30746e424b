"""A learned ranker on LightGBM's LambdaRank: boosted trees trained to order each user's candidates (NDCG)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.core.io import atomic_dir
from recsys.evaluation.full_ranking import grouped_ndcg
from recsys.ranking.ranker_features import CATEGORICAL
from recsys.ranking.ranker_state import read_state, write_state


def group_sizes(user_ids: np.ndarray) -> np.ndarray:
    """Rows per user for rows grouped by user (LightGBM's query groups); raises if a user's rows are split."""
    user_ids = np.asarray(user_ids)
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    if len(np.unique(user_ids[starts])) != len(starts):
        raise ValueError("each user's candidates must be consecutive rows (sort by user first)")
    return np.diff(np.r_[starts, len(user_ids)])


def _shuffle_within_groups(groups: np.ndarray, seed: int) -> np.ndarray:
    """A row order that keeps each group's rows together, in a seeded random order within the group."""
    owner = np.repeat(np.arange(len(groups)), groups)
    return np.lexsort((np.random.default_rng(seed).random(len(owner)), owner))


class LambdaRankRanker:
    """Orders a user's candidates with gradient-boosted trees trained on LambdaRank (listwise NDCG).

    Each user is a query group; a candidate the user went on to watch is relevant (label 1). The
    trees see every feature of `recsys.ranking.ranker_features`, the demographic codes as categories.
    Hyper-parameters are chosen on held-out users of the training stage (`fit` takes them as the
    validation set) with early stopping on their NDCG@10. The NDCG@10 it reports (`valid_ndcg_at_10`)
    is `grouped_ndcg` of its held-out predictions, the definition every ranker reports: users whose
    candidates hold no relevant movie are skipped. Early stopping watches LightGBM's `ndcg@10`, which
    counts such users as 1; on a fixed validation set that is an increasing affine function of
    `grouped_ndcg` (n_relevant / n_users * grouped_ndcg + n_without / n_users), so it keeps the same trees.

    Args:
        features: the feature columns, in order.
        params: LightGBM parameters (num_leaves, learning_rate, min_child_samples, ...).
        seed: seeds the trees (with LightGBM's deterministic mode, the same seed gives the same model).
    """

    name = "lambdarank"

    def __init__(self, features: Sequence[str], params: dict, seed: int):
        self.features, self.params, self.seed = list(features), dict(params), seed
        self.booster = None
        self.best_iteration: int | None = None
        self.fit_s: float | None = None

    def _dataset(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, reference=None):
        import lightgbm as lgb

        categorical = [name for name in CATEGORICAL if name in self.features]
        return lgb.Dataset(
            X[self.features],
            label=y,
            group=groups,
            categorical_feature=categorical,
            reference=reference,
            free_raw_data=False,
        )

    def _lgb_params(self) -> dict:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "bin_construct_sample_cnt": 10**9,  # every row (see _dataset)
            "num_threads": os.cpu_count() or 1,
            "verbosity": -1,
            **self.params,
        }

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        groups: np.ndarray,
        X_valid: pd.DataFrame | None = None,
        y_valid: np.ndarray | None = None,
        groups_valid: np.ndarray | None = None,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 30,
        rounds: int | None = None,
    ) -> LambdaRankRanker:
        """Train; with a validation set, stop when its NDCG@10 has not improved for `early_stopping_rounds`.

        With a validation set, `valid_ndcg_at_10` is `grouped_ndcg` of the kept trees' predictions on it.

        Args:
            X, y, groups: features, labels (1 = watched) and rows per user of the training users.
            X_valid, y_valid, groups_valid: held-out users for early stopping (optional).
            rounds: train exactly this many trees instead (a refit on all users).
        """
        import lightgbm as lgb

        started = time.perf_counter()
        train = self._dataset(X, y, groups)
        callbacks, valid_sets = [], []
        if X_valid is not None and rounds is None:
            valid_sets = [self._dataset(X_valid, y_valid, groups_valid, reference=train)]
            callbacks = [lgb.early_stopping(early_stopping_rounds, verbose=False)]
        self.booster = lgb.train(
            self._lgb_params(),
            train,
            num_boost_round=rounds or num_boost_round,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
        self.best_iteration = self.booster.best_iteration or self.booster.current_iteration()
        self.valid_ndcg_at_10 = (
            grouped_ndcg(self.predict(X_valid), np.asarray(y_valid), np.asarray(groups_valid), k=10)
            if valid_sets
            else None
        )
        self.fit_s = time.perf_counter() - started
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Scores of candidate rows (higher first); only the order within a user means anything."""
        if self.booster is None:
            raise RuntimeError("LambdaRankRanker.predict was called before fit (or load)")
        # numpy: no per-call pandas checks on the serving path; no column selection when X holds exactly the features
        columns = X if list(X.columns) == list(self.features) else X[self.features]
        values = columns.to_numpy(np.float64)
        return self.booster.predict(values, num_iteration=self.best_iteration, num_threads=1)

    def importance(self) -> pd.Series:
        """Total gain of the splits on each feature, largest first."""
        gain = self.booster.feature_importance(importance_type="gain", iteration=self.best_iteration)
        return pd.Series(gain, index=self.features, name="gain").sort_values(ascending=False)

    def save(self, folder: str | os.PathLike) -> Path:
        """The booster (LightGBM's text format) and the ranker's settings, atomically."""
        with atomic_dir(folder) as tmp:
            self.booster.save_model(str(tmp / "booster.txt"), num_iteration=self.best_iteration)
            write_state(tmp, self.name, features=self.features, params=self.params, seed=self.seed)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LambdaRankRanker:
        import lightgbm as lgb

        state = read_state(folder)
        ranker = cls(state["features"], state["params"], state["seed"])
        ranker.booster = lgb.Booster(model_file=str(Path(folder) / "booster.txt"))
        ranker.best_iteration = ranker.booster.current_iteration()
        return ranker
