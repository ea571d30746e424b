"""The learned ranking stage end to end: labelled stage candidates, rankers trained on val users, lists for test.

Protocol (DESIGN.md, "Learned ranking"): at the val stage each user's candidates exclude their
train movies and a candidate is relevant when it is among the user's val movies; the rankers
learn there, a seeded share of the users held out to choose settings and stop training. At the
test stage the candidates exclude train and val movies, the rankers reorder them, and the lists
are scored once on test. Every feature comes from models and counts fitted on train
(`recsys.ranking.ranker_features`).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.features.feature_store import FeatureStore
from recsys.features.fit_records import RunInteractions
from recsys.models.ease import load_ease
from recsys.ranking.lambdarank import group_sizes
from recsys.ranking.ranker_features import FEATURE_GROUPS, FeatureSources, checked_fitted_on
from recsys.ranking.ranker_state import Ranker
from recsys.ranking.rankers import make_ranker
from recsys.retrieval.candidates import EaseSource


def feature_sources(
    store: FeatureStore,
    ease_folder: str,
    train_rating_folder: str,
    n_candidates: int,
    context: dict,
    interactions: pd.DataFrame | RunInteractions | None = None,
    retriever: tuple | None = None,
    joint_folder: str | None = None,
) -> FeatureSources:
    """The features' sources from saved models: EASE and the rating model fitted on train, the store's vectors.

    What each model was fitted on comes from its fit record matched to the run's interactions
    (`ranker_features.checked_fitted_on`): a model whose record matches none of the run's split
    sets, or whose label disagrees with it, is refused (SourceRecordError); `FeatureSources.check`
    then refuses, stage by stage, the sources fitted on the stage's labels.

    Args:
        store: the feature store, with the retrieval model's vectors attached.
        ease_folder: EASE saved by `ease.save_ease` (fitted on train).
        train_rating_folder: the rating model fitted on train only (`rating_training.save_rating_model`).
        n_candidates: candidates per source (a missing rank is n_candidates + 1).
        context: the requests' {hour, weekday, month} for the predicted rating.
        interactions: the run's interactions (every split, with their ratings), or a RunInteractions
            of them; None takes the saved labels as they are.
        retriever: (model, encoder) of the served two-tower, whose fit record is checked too; None (the
            sequential retriever, or no check) takes it as fitted on train.
        joint_folder: the joint multitask model fitted on train (`multitask_model.save_multitask_model`),
            for the joint score (`joint_vectors`); None leaves that feature out.
    """
    stores = {"store": store}
    args = (ease_folder, train_rating_folder, n_candidates, context, interactions, retriever, joint_folder)
    return stage_feature_sources(stores, *args)["store"]


def stage_feature_sources(
    stores: Mapping[str, FeatureStore],
    ease_folder: str,
    train_rating_folder: str,
    n_candidates: int,
    context: dict,
    interactions: pd.DataFrame | RunInteractions | None = None,
    retriever: tuple | None = None,
    joint_folder: str | None = None,
) -> dict[str, FeatureSources]:
    """`feature_sources` of each stage's store, with each saved model loaded and its fit record checked once.

    The stages share EASE's weights, the rating and joint models and the run's interactions (whose
    per-model encodings and fit records are then computed once); what reads a store is built per
    stage: its predicted ratings, its joint vectors, and its own EASE source (each keeps its last
    scores, as `EaseSource.scores` says). At 25M ratings, loading them per stage held a second copy
    of each (DESIGN.md, "Scale"). Arguments as `feature_sources`'s, one store per stage.
    """
    from recsys.models.multitask_model import load_multitask_model
    from recsys.ranking.served_rankers import RatingRanker
    from recsys.training.rating_training import load_rating_model

    fits = RunInteractions(interactions) if isinstance(interactions, pd.DataFrame) else interactions
    ease_model, ease_movie_ids, ease_label = load_ease(ease_folder)
    model, encoder = load_rating_model(train_rating_folder)
    retrieval = ("train",)  # as the retrieval step fits it, unless its record says otherwise (none: sequential)
    if retriever is not None and retriever[0].fit_record is not None:
        retrieval = checked_fitted_on("retrieval", retriever[0].fit_record, None, fits, retriever[1])
    fitted_on = {
        "retrieval": retrieval,
        "ease": checked_fitted_on("ease", ease_model.fit_record, ease_label, fits),
        "rating_model": checked_fitted_on("rating_model", model.fit_record, model.fitted_on, fits, encoder),
    }
    joint_model = joint_encoder = None
    if joint_folder is not None:
        joint_model, joint_encoder = load_multitask_model(joint_folder)
        fitted_on["joint_model"] = checked_fitted_on(
            "joint_model", joint_model.fit_record, joint_model.fitted_on, fits, joint_encoder
        )
    ease_weights = np.asarray(ease_model.weights_, np.float32)  # one array for every stage's source
    return {
        stage: FeatureSources(
            store,
            n_candidates,
            EaseSource(ease_weights, ease_movie_ids),
            RatingRanker(store, model, encoder, context).predicted_ratings,
            dict(fitted_on),
            fits,
            None if joint_model is None else joint_vectors(store, joint_model, joint_encoder),
        )
        for stage, store in stores.items()
    }


def joint_vectors(store: FeatureStore, model, encoder) -> tuple[np.ndarray, np.ndarray]:
    """The joint model's unit retrieval vectors of every user and movie of the store, rows aligned with its tables.

    Computed once (a pass over the store's users and movies): a request's joint score is then a dot
    product, as the retrieval score is.
    """
    from recsys.models.retrieval_model import embed_in_batches

    users = embed_in_batches(model.query_vectors, store.user_inputs(np.arange(len(store.users)), encoder))
    movies = embed_in_batches(model.candidate_vectors, store.movie_inputs(np.arange(len(store.movies)), encoder))
    return np.asarray(users, np.float32), np.asarray(movies, np.float32)


def with_rating_model(sources: FeatureSources, model, encoder, context: dict | None) -> FeatureSources:
    """The same sources with another rating model's predicted rating, recorded as fitted on what that model was.

    E.g. the rating model refitted on train + val: its features are then refused at the val stage
    (`FeatureSources.check` raises LeakageError), as its predictions have seen the val labels. What
    it was fitted on is read from its fit record when the sources have the run's interactions
    (`ranker_features.checked_fitted_on`; its label otherwise).

    Args:
        model, encoder: the rating model (with its `fitted_on` label and `fit_record`) and its FeatureEncoder.
        context: the requests' {hour, weekday, month} for the predicted rating.
    """
    from recsys.ranking.served_rankers import RatingRanker

    fitted_on = checked_fitted_on(
        "rating_model", getattr(model, "fit_record", None), model.fitted_on, sources.fits, encoder
    )
    return dataclasses.replace(
        sources,
        predicted_rating=RatingRanker(sources.store, model, encoder, context).predicted_ratings,
        fitted_on={**sources.fitted_on, "rating_model": fitted_on},
    )


@dataclass
class StageData:
    """One stage's candidates (grouped by user), their features and labels.

    Attributes:
        candidates: the candidate table (recsys.retrieval.candidates.CANDIDATE_COLUMNS).
        features: one row per candidate (recsys.ranking.ranker_features).
        labels: 1 where the candidate is among the user's held-out movies of the stage.
    """

    candidates: pd.DataFrame
    features: pd.DataFrame
    labels: np.ndarray

    @property
    def groups(self) -> np.ndarray:
        return group_sizes(self.candidates["user_id"].to_numpy())

    def summary(self) -> dict[str, float]:
        """candidates, users, and relevant_share (the share of candidates that are relevant)."""
        return {
            "candidates": len(self.labels),
            "users": len(self.groups),
            "relevant_share": float(self.labels.mean()) if len(self.labels) else float("nan"),
        }

    def users(self, mask: np.ndarray) -> StageData:
        """The rows of the users chosen by a per-user mask (in user order); stays grouped by user."""
        rows = np.repeat(mask, self.groups)
        return StageData(
            self.candidates[rows].reset_index(drop=True), self.features[rows].reset_index(drop=True), self.labels[rows]
        )


def stage_data(candidates: pd.DataFrame, sources: FeatureSources, stage: str, held_out: pd.DataFrame) -> StageData:
    """Features of a stage's candidates (checked for leakage) and their labels from the held-out pairs."""
    features = sources.build(candidates, stage)
    pairs = held_out[["user_id", "movie_id"]].drop_duplicates().assign(_label=1.0)
    labels = candidates[["user_id", "movie_id"]].merge(pairs, on=["user_id", "movie_id"], how="left")["_label"]
    return StageData(candidates, features, labels.fillna(0.0).to_numpy(np.float32))


def holdout_mask(n_users: int, share: float, seed: int) -> np.ndarray:
    """A seeded per-user mask: True for the users held out from training to choose settings and stop early."""
    mask = np.zeros(n_users, bool)
    mask[np.random.default_rng(seed).permutation(n_users)[: max(1, round(share * n_users))]] = True
    return mask


def lambdarank_grid(
    fit: StageData, valid: StageData, features: list[str], params: dict, seed: int
) -> tuple[dict, Ranker, list[dict]]:
    """LambdaRank's grid: each point fitted on `fit`'s users, early-stopped on `valid`'s; the best on `valid` kept.

    Returns:
        (the best point's settings, its ranker fitted on `fit`, one row per point: its settings, trees,
        NDCG@10 on `valid` (holdout_ndcg_at_10), fit_s).
    """
    grid = list(itertools.product(params["num_leaves"], params["min_child_samples"]))
    rows, best = [], None
    for num_leaves, min_child_samples in grid:
        setting = {
            "num_leaves": num_leaves,
            "min_child_samples": min_child_samples,
            "learning_rate": params["learning_rate"],
            "lambdarank_truncation_level": params["truncation_level"],
        }
        ranker = make_ranker("lambdarank", features, setting, seed).fit(
            fit.features,
            fit.labels,
            fit.groups,
            valid.features,
            valid.labels,
            valid.groups,
            num_boost_round=params["max_rounds"],
            early_stopping_rounds=params["early_stopping_rounds"],
        )
        rows.append(
            {
                **setting,
                "trees": ranker.best_iteration,
                "holdout_ndcg_at_10": ranker.valid_ndcg_at_10,
                "fit_s": ranker.fit_s,
            }
        )
        if best is None or ranker.valid_ndcg_at_10 > best[1].valid_ndcg_at_10:
            best = (setting, ranker)
    return *best, rows


def train_lambdarank(
    data: StageData, features: list[str], params: dict, holdout_share: float, seed: int
) -> tuple[Ranker, pd.DataFrame]:
    """LambdaRank: the grid on the held-out users (`lambdarank_grid`), the best point refitted on every user of the
    stage with its number of trees.

    Returns:
        (the refitted ranker, one row per grid point: its settings, trees, held-out NDCG@10, fit_s).
    """
    held = holdout_mask(len(data.groups), holdout_share, seed)
    setting, chosen, rows = lambdarank_grid(data.users(~held), data.users(held), features, params, seed)
    started = time.perf_counter()
    refit = make_ranker("lambdarank", features, setting, seed).fit(
        data.features, data.labels, data.groups, rounds=chosen.best_iteration
    )
    refit.valid_ndcg_at_10 = chosen.valid_ndcg_at_10
    rows.append(
        {
            **setting,
            "trees": refit.best_iteration,
            "holdout_ndcg_at_10": np.nan,
            "fit_s": time.perf_counter() - started,
            "refit_on_all_users": True,
        }
    )
    return refit, pd.DataFrame(rows)


def train_dcn(data: StageData, features: list[str], params: dict, holdout_share: float, seed: int) -> Ranker:
    """DCN-v2, trained on the training users with early stopping on the held-out users' NDCG@10."""
    held = holdout_mask(len(data.groups), holdout_share, seed)
    fit, valid = data.users(~held), data.users(held)
    return make_ranker("dcn", features, params, seed).fit(
        fit.features, fit.labels, fit.groups, valid.features, valid.labels, valid.groups
    )


@dataclass
class TrainedRankers:
    """The rankers trained at the val stage (`train_rankers`).

    Attributes:
        rankers: name -> fitted ranker: "lambdarank", "dcn", and with the ablation "lambdarank_no_ease".
        tuning: LambdaRank's grid, one row per setting and one for the refit (`train_lambdarank`).
        train_s: seconds to train LambdaRank (grid and refit) and DCN-v2; the ablation is not counted.
    """

    rankers: dict[str, Ranker]
    tuning: pd.DataFrame
    train_s: float


def train_rankers(data: StageData, features: list[str], params: Mapping, seed: int) -> TrainedRankers:
    """LambdaRank (its grid, then the refit) and DCN-v2 on the val stage, and the ablation without EASE.

    The ablation (`params["ablation"]`) refits LambdaRank without the EASE features at the setting
    the full grid chose, so the two differ only by those features.

    Args:
        data: the val stage's candidates (`stage_data`).
        features: the feature columns both rankers read.
        params: the ranker parameters: holdout_share, ablation, lambdarank (`train_lambdarank`),
            dcn (`train_dcn`).
        seed: seeds the held-out users and the rankers.
    """
    started = time.perf_counter()
    lambdarank, tuning = train_lambdarank(data, features, params["lambdarank"], params["holdout_share"], seed)
    dcn = train_dcn(data, features, params["dcn"], params["holdout_share"], seed)
    train_s = time.perf_counter() - started
    rankers = {"lambdarank": lambdarank, "dcn": dcn}
    if params["ablation"]:
        chosen = {name: [lambdarank.params[name]] for name in ("num_leaves", "min_child_samples")}
        no_ease = [name for name in features if name not in FEATURE_GROUPS["ease"]]
        rankers["lambdarank_no_ease"], _ = train_lambdarank(
            data, no_ease, {**params["lambdarank"], **chosen}, params["holdout_share"], seed
        )
    return TrainedRankers(rankers, tuning, train_s)


def comparison_scores(
    data: StageData, rankers: Mapping[str, Ranker], rating_scores: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-candidate scores of every list compared at the test stage (higher first; -inf never ranks).

    Args:
        data: the test stage's candidates and features (`stage_data`).
        rankers: name -> fitted ranker, scored on the features.
        rating_scores: the rating model's predicted rating of each candidate.

    Returns:
        "retrieval_only" (the retriever's own order, its candidates only), "ease" (EASE's order, its
        candidates only), "two_stage" (the retriever's candidates by predicted rating), then one
        entry per ranker.
    """
    candidates = data.candidates
    from_retrieval = candidates["retrieval_rank"].to_numpy() > 0
    scores = {
        "retrieval_only": -candidates["retrieval_rank"].where(from_retrieval, np.inf).to_numpy(),
        "ease": -candidates["ease_rank"].where(candidates["ease_rank"] > 0, np.inf).to_numpy(),
        "two_stage": np.where(from_retrieval, rating_scores, -np.inf),
    }
    return {**scores, **{name: ranker.predict(data.features) for name, ranker in rankers.items()}}


def stage_metrics(table: pd.DataFrame, recall: pd.DataFrame, learned: str, trained: TrainedRankers) -> dict[str, float]:
    """The stage's metrics beside the lists' own: candidate recall at the test stage, spreads, the rankers' training.

    Args:
        table: the compared lists, one row per strategy, with recall_at_10_std and ndcg_at_10_std
            (`recsys.evaluation.list_comparison.compare_lists`).
        recall: candidate recall per stage (`recsys.retrieval.candidates.candidate_recall_table`).
        learned: the row of the learned ranker the run would serve (`ranker.served`).
        trained: the rankers, with "lambdarank" and "dcn" (`train_rankers`).

    Returns:
        candidate_recall_<source>_test and candidates_per_user_test; candidate_recall_at_100 (the
        retriever's candidate recall at the test stage, under its historical name);
        <metric>_learned_std of recall@10 and NDCG@10; lambdarank_ and dcn_holdout_ndcg_at_10;
        rankers_train_s.
    """
    test = recall.loc["test"]
    return {
        **{f"{name}_test": float(value) for name, value in test.items() if name.startswith("candidate")},
        "candidate_recall_at_100": float(test["candidate_recall_retrieval"]),
        "ndcg_at_10_learned_std": float(table.loc[learned, "ndcg_at_10_std"]),
        "recall_at_10_learned_std": float(table.loc[learned, "recall_at_10_std"]),
        "lambdarank_holdout_ndcg_at_10": float(trained.rankers["lambdarank"].valid_ndcg_at_10),
        "dcn_holdout_ndcg_at_10": float(trained.rankers["dcn"].valid_ndcg_at_10),
        "rankers_train_s": trained.train_s,
    }


def top_k_lists(candidates: pd.DataFrame, scores: np.ndarray, users: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) movie ids: each user's k best candidates by score (ties by candidate order).

    Raises:
        ValueError: a user has fewer than k candidates.
    """
    table = candidates[["user_id", "movie_id"]].assign(
        _score=np.asarray(scores, np.float64), _row=np.arange(len(scores))
    )
    table = table.sort_values(["user_id", "_score", "_row"], ascending=[True, False, True], kind="stable")
    table = table[table.groupby("user_id").cumcount() < k]
    counts = table.groupby("user_id").size().reindex(users, fill_value=0)
    if (counts < k).any():
        raise ValueError(f"{int((counts < k).sum())} users have fewer than {k} candidates")
    return table.set_index("user_id").loc[users, "movie_id"].to_numpy().reshape(len(users), k)
