"""The exploration setting to serve, chosen on the val stage: lists scored on val movies only, test scored after."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import catalogue_columns, evaluate_lists, split_matrices
from recsys.exploration.reranking import choose_setting
from recsys.features.preprocessing import genre_columns
from recsys.ranking.ranker_features import FeatureSources

# the numbers a choice trades (`reranking.choose_setting`): reported for the chosen setting on val and on test
CHOICE_METRICS = ("ndcg_at_10", "coverage_at_10")


@dataclass(frozen=True)
class ValEvaluator:
    """Scores (n_users, k) lists of movie ids of the val users against their val movies: what a setting is chosen on.

    It is built from the interactions with every test row dropped first, so nothing it holds (its
    users, their val movies, the train popularity) can depend on test, and neither can a choice
    made from its numbers. The metrics are those of `full_ranking.ListEvaluator` (which scores test).

    Attributes:
        users: every user with a val interaction, sorted (the rows of every list).
        catalogue: every movie id (columns).
        relevant: (n_users, n_movies) the users' val movies.
        popularity_share: each movie's share of these users' train interactions (novelty).
        genres: (n_movies, n_genres) indicators (intra-list diversity).
    """

    users: np.ndarray
    catalogue: np.ndarray
    relevant: sp.csr_matrix
    popularity_share: np.ndarray
    genres: sp.csr_matrix

    @classmethod
    def build(cls, interactions: pd.DataFrame, movies: pd.DataFrame) -> ValEvaluator:
        """Every user with a val interaction, over the whole catalogue of `movies`; test rows are dropped unread."""
        before_test = interactions[interactions["split"] != "test"]
        users = np.sort(before_test.loc[before_test["split"] == "val", "user_id"].unique())
        catalogue = movies["movie_id"].to_numpy()
        matrices = split_matrices(before_test[before_test["user_id"].isin(users)], users, catalogue)
        genres = sp.csr_matrix(movies[genre_columns(movies)].to_numpy(dtype=np.float32))
        return cls(users, catalogue, matrices.val, metrics.item_popularity_share(matrices.train), genres)

    def evaluate(self, movie_ids: np.ndarray, k: int = 10) -> dict[str, float]:
        """recall_at_k, ndcg_at_k, coverage_at_k, novelty, intra_list_diversity, gini of the lists, on val."""
        columns = catalogue_columns(self.catalogue, movie_ids[:, :k])
        return evaluate_lists(columns, self.relevant, len(self.catalogue), self.popularity_share, self.genres, k=k)


def evaluate_settings(evaluator, lists: Mapping[str, np.ndarray], k: int = 10) -> pd.DataFrame:
    """One row per setting (index: its name): the evaluator's metrics of its lists, averaged over repeats.

    Args:
        evaluator: a `ValEvaluator` for the sweep, or `ListEvaluator.for_test` to score the chosen
            setting (and its reference) once on test, after the choice.
        lists: setting -> (n_users, depth) movie ids, or (repeats, n_users, depth) for a randomised
            setting (each repeat scored, then the mean); rows aligned with `evaluator.users`.
    """
    rows = {}
    for name, ids in lists.items():
        ids = np.asarray(ids)
        repeats = ids[None] if ids.ndim == 2 else ids
        if repeats.ndim != 3 or repeats.shape[1] != len(evaluator.users):
            raise ValueError(
                f"the lists of {name!r} must be (n_users, depth) or (repeats, n_users, depth) with n_users = "
                f"{len(evaluator.users)} (the evaluator's users), got shape {ids.shape}"
            )
        rows[name] = pd.DataFrame([evaluator.evaluate(one, k) for one in repeats]).mean().to_dict()
    return pd.DataFrame.from_dict(rows, orient="index")


@dataclass(frozen=True)
class SettingChoice:
    """The setting chosen on val (`choose_on_val`) and the val metrics it was chosen from, one row per setting."""

    chosen: str
    table: pd.DataFrame


def choose_on_val(
    evaluator: ValEvaluator,
    lists: Mapping[str, np.ndarray],
    reference: str,
    max_loss: float,
    among: Iterable[str] | None = None,
    k: int = 10,
) -> SettingChoice:
    """The exploration setting to serve, chosen from the val numbers of every setting (`reranking.choose_setting`).

    The widest coverage@k among the settings that lose at most `max_loss` of the reference's
    NDCG@k, all scored on val by a `ValEvaluator`: no test number can reach the choice. Score the
    chosen setting and the reference on test afterwards (`evaluate_settings`).

    Args:
        evaluator: the val evaluator; any other (a test one) is refused.
        lists: setting -> its lists of the val users (as for `evaluate_settings`).
        reference: the setting without exploration.
        max_loss: the largest relative loss of NDCG@k accepted, e.g. 0.05.
        among: the settings to choose from (default: every one); the table holds all of `lists`.

    Raises:
        TypeError: `evaluator` is not a ValEvaluator.
    """
    if not isinstance(evaluator, ValEvaluator):
        raise TypeError(
            f"an exploration setting is chosen on the val stage: pass a ValEvaluator, got {type(evaluator).__name__} "
            "(score only the chosen setting on test, after the choice)"
        )
    candidates = list(lists) if among is None else list(among)
    missing = [name for name in candidates if name not in lists]
    if missing:
        raise KeyError(f"settings {missing} have no lists (known: {list(lists)})")
    table = evaluate_settings(evaluator, lists, k)
    chosen = choose_setting(table.loc[candidates], reference, max_loss, f"ndcg_at_{k}", f"coverage_at_{k}")
    return SettingChoice(chosen, table)


def choice_metrics(choice: SettingChoice, test: pd.DataFrame) -> dict:
    """metrics.json entries of a choice: made on val, which setting, and its CHOICE_METRICS on val and on test.

    Args:
        test: the test metrics of the chosen setting (and its reference), one row per setting (`evaluate_settings`).
    """
    chosen = choice.chosen
    return {
        "setting_chosen_on": "val",
        "setting_chosen": chosen,
        **{f"val_{key}_chosen": float(choice.table.loc[chosen, key]) for key in CHOICE_METRICS},
        **{f"{key}_chosen": float(test.loc[chosen, key]) for key in CHOICE_METRICS},
    }


def val_stage_scores(ranker, sources: FeatureSources, candidates: pd.DataFrame) -> np.ndarray:
    """The served ranker's scores of val-stage candidates, every feature from sources fitted on train.

    A learned ranker scores the features built for the val stage (`FeatureSources.build` refuses
    sources fitted on val); the rating ranker's val-stage score is the predicted rating of the
    rating model fitted on train (the refitted one has seen the val ratings).

    Args:
        ranker: the served ranker (`served_rankers.load_served_ranker`).
        sources: the val stage's feature sources (its feature store: the users' train history).
        candidates: the val stage's candidate table.
    """
    from recsys.ranking.served_rankers import LearnedRanker  # TensorFlow: imported only where a ranker is scored

    features = sources.build(candidates, "val")
    if isinstance(ranker, LearnedRanker):
        return ranker.ranker.predict(features)
    if "predicted_rating" not in features:
        raise ValueError(
            "the val-stage sources give no predicted rating: build them with a rating model fitted on train"
        )
    return features["predicted_rating"].to_numpy(np.float64)
