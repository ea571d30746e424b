"""The learned ranking stage: multi-source candidates, train-only features (the leakage guard), rankers, serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsys.core.ids import NO_MOVIE
from recsys.evaluation.full_ranking import bootstrap_spread, grouped_ndcg
from recsys.models.ease import EASE
from recsys.ranking.learned_ranking import StageData, holdout_mask, stage_data, top_k_lists
from recsys.ranking.ranker_features import FEATURE_GROUPS, FeatureSources, LeakageError
from recsys.retrieval.candidates import (
    CANDIDATE_COLUMNS,
    SOURCE_BOTH,
    SOURCE_EASE,
    SOURCE_RETRIEVAL,
    EaseSource,
    candidate_recall,
    merge_sources,
)
from recsys.runs.params import load_params
from tests.online_fixtures import tiny_store_and_encoder

DEFAULTS = load_params()


def test_merge_sources_labels_ranks_and_orders_each_users_candidates():
    retrieved = pd.DataFrame(
        {"user_id": [7, 7, 7, 3, 3], "movie_id": [10, 20, 30, 20, 40], "retrieval_score": [0.9, 0.8, 0.7, 0.6, 0.5]}
    )
    ease_ids = np.array([[30, 50, NO_MOVIE], [60, 20, 10]])  # user 7 first: the order of first appearance
    ease_scores = np.array([[2.0, 1.0, -np.inf], [3.0, 2.0, 1.0]], np.float32)
    table = merge_sources(retrieved, ease_ids, ease_scores)
    assert list(table.columns) == CANDIDATE_COLUMNS
    rows = list(
        table[["user_id", "movie_id", "source", "retrieval_rank", "ease_rank"]].itertuples(index=False, name=None)
    )
    assert rows == [
        (7, 10, SOURCE_RETRIEVAL, 1, 0),
        (7, 20, SOURCE_RETRIEVAL, 2, 0),
        (7, 30, SOURCE_BOTH, 3, 1),
        (7, 50, SOURCE_EASE, 0, 2),
        (3, 20, SOURCE_BOTH, 1, 2),
        (3, 40, SOURCE_RETRIEVAL, 2, 0),
        (3, 60, SOURCE_EASE, 0, 1),
        (3, 10, SOURCE_EASE, 0, 3),
    ]
    assert table.loc[2, "ease_score"] == 2.0 and np.isnan(table.loc[0, "ease_score"])
    assert np.isnan(table.loc[3, "retrieval_score"]) and table.loc[0, "retrieval_score"] == 0.9
    only = merge_sources(retrieved)
    assert (only["source"] == SOURCE_RETRIEVAL).all() and only["retrieval_rank"].tolist() == [1, 2, 3, 1, 2]


def test_candidate_recall_per_source_and_merged():
    retrieved = pd.DataFrame({"user_id": [1, 1, 2, 2], "movie_id": [10, 11, 20, 21], "retrieval_score": 1.0})
    table = merge_sources(retrieved, np.array([[12, 10], [22, 23]]), np.ones((2, 2), np.float32))
    held = pd.DataFrame({"user_id": [1, 1, 2, 9], "movie_id": [10, 12, 30, 10]})  # user 9: no candidates
    recall = candidate_recall(table, held)
    # user 1: retrieval finds 10 of {10, 12} (1 / min(2, 2)), EASE both, merged both; user 2: nothing
    assert recall == {
        "candidate_recall_retrieval": pytest.approx((0.5 + 0 + 0) / 3),
        "candidate_recall_ease": pytest.approx((1.0 + 0 + 0) / 3),
        "candidate_recall_merged": pytest.approx((1.0 + 0 + 0) / 3),
    }


@pytest.fixture(scope="module")
def world():
    """The tiny store with retrieval vectors, EASE fitted on train, and a (random) rating model fitted 'on train'."""
    from recsys.core.seeding import set_seed
    from recsys.evaluation.full_ranking import split_matrices
    from recsys.models.configs import RatingConfig
    from recsys.models.rating_model import build_rating_model
    from recsys.ranking.served_rankers import RatingRanker
    from recsys.retrieval.retrievers import NumpyRetriever

    set_seed(3)
    store, encoder, (users, movies, interactions) = tiny_store_and_encoder()
    rng = np.random.default_rng(0)
    store.with_vectors(rng.normal(size=(len(store.users), 4)), rng.normal(size=(len(store.movies), 4)))
    catalogue = store.movies.index.to_numpy()
    matrices = split_matrices(interactions, store.users.index.to_numpy(), catalogue)
    ease = EaseSource(EASE(10.0).fit(matrices.train).weights_, catalogue)
    config = dataclasses.replace(RatingConfig.from_params(DEFAULTS["rating"]), embedding_dim=4, side_dim=2)
    model = build_rating_model(encoder.cardinalities(), config, global_mean=3.5)
    context = {"hour": 20, "weekday": 4, "month": 12}
    ratings = RatingRanker(store, model, encoder, context)
    sources = FeatureSources(
        store,
        5,
        ease,
        ratings.predicted_ratings,
        {"retrieval": ("train",), "ease": ("train",), "rating_model": ("train",)},
    )
    retriever = NumpyRetriever(store.users.index, store.user_vectors, catalogue, store.movie_vectors)
    return {
        "store": store,
        "sources": sources,
        "retriever": retriever,
        "ease": ease,
        "model": model,
        "encoder": encoder,
        "interactions": interactions,
        "tables": (users, movies),
        "context": context,
        "ratings": ratings,
    }


def candidates_of(world, exclude="seen"):
    from recsys.serving.recommender import retrieve_candidates

    users = world["store"].users.index.to_numpy()
    return retrieve_candidates(
        users, 5, store=world["store"], retrieval_index=world["retriever"], ease=world["ease"], exclude=exclude
    )


def test_features_are_what_they_say(world):
    store, sources = world["store"], world["sources"]
    candidates = candidates_of(world)
    features = sources.build(candidates, "test")
    assert list(features.columns) == list(sources.features) and len(features) == len(candidates)
    users = store.user_positions(candidates["user_id"])
    movies = store.movie_positions(candidates["movie_id"])
    np.testing.assert_allclose(
        features["retrieval_score"], (store.user_vectors[users] * store.movie_vectors[movies]).sum(axis=1), rtol=1e-5
    )
    ranks = candidates["retrieval_rank"].to_numpy()
    np.testing.assert_array_equal(features["retrieval_rank"], np.where(ranks > 0, ranks, 6))  # missing: n + 1
    first = candidates["user_id"].iloc[0]
    history = store.history_movies(first)
    expected = world["ease"].scores([history])[0][world["ease"].column.positions(candidates["movie_id"][:3])]
    np.testing.assert_allclose(features["ease_score"][:3], expected, rtol=1e-5)
    np.testing.assert_allclose(
        features["predicted_rating"], world["ratings"].predicted_ratings(users, movies), rtol=1e-6
    )
    assert features["genre_affinity"].between(0, 1.0001).all() and (features["gender"] >= 1).all()
    np.testing.assert_allclose(features["log_activity"], np.log1p(store.users["n_train_ratings"].to_numpy()[users]))


def test_a_store_of_users_without_attributes_gives_no_demographic_features(world):
    """ML-10M on: users are ids only; the ranker's features leave the demographic codes out, not zeros."""
    from recsys.features.encoding import FeatureEncoder
    from recsys.features.feature_store import FeatureStore

    users, movies = world["tables"]
    store = FeatureStore.build(users[["user_id"]], movies, world["interactions"])
    assert list(store.users.columns) == ["n_train_ratings"]
    store.with_vectors(world["store"].user_vectors, world["store"].movie_vectors)
    sources = dataclasses.replace(world["sources"], store=store)
    features = sources.build(candidates_of(world), "test")
    assert not {"gender", "age_group", "occupation"} & set(features.columns)
    assert "log_activity" in features.columns and list(features.columns) == list(sources.features)
    encoder = FeatureEncoder.fit(users[["user_id"]], movies, world["interactions"])
    assert set(store.user_inputs(np.arange(3), encoder)) == {"user_id"}


def test_a_val_stage_feature_fitted_on_val_is_refused(world):
    sources, candidates = world["sources"], candidates_of(world, exclude="history")
    sources.build(candidates, "val")  # train-only sources: fine
    refit = dataclasses.replace(sources, fitted_on={**sources.fitted_on, "rating_model": ("train", "val")})
    with pytest.raises(LeakageError, match=r"val stage.*'rating_model': \['train', 'val'\]"):
        refit.build(candidates, "val")
    refit.build(candidates, "test")  # the test stage may read a model that saw val, never one that saw test
    with pytest.raises(LeakageError, match="test stage"):
        dataclasses.replace(sources, fitted_on={"ease": ("train", "val", "test")}).build(candidates, "test")


def test_a_store_reading_val_histories_serves_the_test_stage_only(world):
    """The test stage reads each user's train + val movies as their past; the val stage must not."""
    from recsys.features.feature_store import FeatureStore

    store, interactions = world["store"], world["interactions"]
    users, movies = world["tables"]
    test_store = FeatureStore.build(users, movies, interactions, history_splits=("train", "val")).with_vectors(
        store.user_vectors, store.movie_vectors
    )
    test_sources = dataclasses.replace(world["sources"], store=test_store)
    candidates = candidates_of(world)
    with pytest.raises(LeakageError, match=r"val stage.*'store': \['train', 'val'\]"):
        test_sources.build(candidates, "val")
    features = test_sources.build(candidates, "test")
    first = candidates["user_id"].iloc[0]
    past = interactions[(interactions["user_id"] == first) & (interactions["split"] != "test")]["movie_id"]
    assert sorted(test_store.history_movies(first)) == sorted(past)
    expected = world["ease"].scores([test_store.history_movies(first)])[0][
        world["ease"].column.positions(candidates["movie_id"][:3])
    ]
    np.testing.assert_allclose(features["ease_score"][:3], expected, rtol=1e-5)


def stage(world) -> StageData:
    interactions = world["interactions"]
    return stage_data(
        candidates_of(world, exclude="history"), world["sources"], "val", interactions[interactions["split"] == "val"]
    )


def planted(n_users=300, width=20, seed=0):
    """Lists where relevance follows one feature (noisily) and the rest is noise: any ranker must find it."""
    rng = np.random.default_rng(seed)
    n = n_users * width
    features = pd.DataFrame({name: rng.normal(size=n).astype(np.float32) for name in FEATURE_GROUPS["retrieval"]})
    features["gender"] = rng.integers(1, 3, n).astype(np.float32)
    labels = (features["retrieval_score"] + 0.3 * rng.normal(size=n) > 1.2).astype(np.float32).to_numpy()
    candidates = pd.DataFrame(
        {"user_id": np.repeat(np.arange(n_users), width), "movie_id": np.tile(np.arange(width), n_users)}
    )
    return StageData(candidates, features, labels)


@pytest.mark.parametrize("name", ["lambdarank", "dcn"])
def test_rankers_learn_a_planted_signal_and_reload_with_identical_scores(tmp_path, name):
    from recsys.ranking.learned_ranking import train_dcn, train_lambdarank
    from recsys.ranking.rankers import load_ranker

    data, features = planted(), ["retrieval_score", "retrieval_rank", "gender"]
    if name == "lambdarank":
        ranker, tuning = train_lambdarank(
            data, features, {**DEFAULTS["ranker"]["lambdarank"], "num_leaves": [7]}, 0.2, 1
        )
        assert tuning["refit_on_all_users"].fillna(False).tolist() == [False, True]
    else:
        ranker = train_dcn(data, features, {**DEFAULTS["ranker"]["dcn"], "max_epochs": 8}, 0.2, 1)
    test = planted(seed=1)
    scores = ranker.predict(test.features)
    assert grouped_ndcg(scores, test.labels, test.groups) > 0.85
    assert grouped_ndcg(-scores, test.labels, test.groups) < 0.3
    reloaded = load_ranker(ranker.save(tmp_path / name))
    np.testing.assert_array_equal(reloaded.predict(test.features), scores)


@pytest.mark.parametrize("name", ["lambdarank", "dcn"])
def test_both_rankers_report_the_holdout_ndcg_of_grouped_ndcg_skipping_users_without_a_relevant_candidate(name):
    from recsys.ranking.rankers import make_ranker

    fit, valid = planted(n_users=120, width=10), planted(n_users=40, width=10, seed=1)
    no_relevant = np.where(valid.candidates["user_id"].to_numpy() == 0, 0.0, valid.labels).astype(np.float32)
    valid = StageData(valid.candidates, valid.features, no_relevant)  # user 0 surely has no relevant candidate
    relevant = np.add.reduceat(valid.labels, np.r_[0, np.cumsum(valid.groups)[:-1]]) > 0
    assert 0 < (~relevant).sum() < len(relevant)
    features = ["retrieval_score", "retrieval_rank", "gender"]
    if name == "lambdarank":
        lgb = DEFAULTS["ranker"]["lambdarank"]
        params = {"num_leaves": 7, "min_child_samples": 20, "learning_rate": lgb["learning_rate"]}
        fit_args = {"num_boost_round": 30, "early_stopping_rounds": 10}
    else:
        params, fit_args = {**DEFAULTS["ranker"]["dcn"], "max_epochs": 2}, {}
    ranker = make_ranker(name, features, params, seed=1).fit(
        fit.features, fit.labels, fit.groups, valid.features, valid.labels, valid.groups, **fit_args
    )
    expected = grouped_ndcg(ranker.predict(valid.features), valid.labels, valid.groups, k=10)
    assert expected < 1
    assert ranker.valid_ndcg_at_10 == pytest.approx(expected, rel=1e-9)
    if name == "lambdarank":  # LightGBM's own ndcg@10 (early stopping) counts the users without one as 1
        lightgbm = ranker.booster.best_score["valid_0"]["ndcg@10"]
        assert lightgbm == pytest.approx((relevant.sum() * expected + (~relevant).sum()) / len(relevant), rel=1e-9)
        assert lightgbm > expected + 0.01


def test_grouped_ndcg_and_top_k_lists_by_hand():
    scores, labels = np.array([0.9, 0.1, 0.5, 0.2, 0.3]), np.array([0.0, 1.0, 0.0, 1.0, 0.0])
    # user A (3 rows): relevant ranked 3rd of 3; user B (2 rows): relevant ranked 2nd of 2
    expected = (1 / np.log2(4) + 1 / np.log2(3)) / 2
    assert grouped_ndcg(scores, labels, np.array([3, 2]), k=10) == pytest.approx(expected)
    candidates = pd.DataFrame({"user_id": [5, 5, 5, 6, 6], "movie_id": [1, 2, 3, 4, 5]})
    np.testing.assert_array_equal(top_k_lists(candidates, scores, np.array([6, 5]), 2), [[5, 4], [1, 3]])
    with pytest.raises(ValueError, match="fewer than 3 candidates"):
        top_k_lists(candidates, scores, np.array([5, 6]), 3)


def test_holdout_and_bootstrap_are_seeded():
    assert holdout_mask(100, 0.2, 7).sum() == 20
    np.testing.assert_array_equal(holdout_mask(100, 0.2, 7), holdout_mask(100, 0.2, 7))
    per_user = {
        name: pd.DataFrame({"ndcg_at_10": np.linspace(0, 1, 50) + shift}, index=np.arange(50))
        for name, shift in (("a", 0.0), ("b", 0.1))
    }
    spread = bootstrap_spread(per_user, 300, seed=1).set_index("strategy")
    assert spread.loc["b", "mean"] == pytest.approx(spread.loc["a", "mean"] + 0.1)
    assert 0 < spread.loc["a", "std"] < 0.1 and spread.loc["a", "low_2.5%"] < 0.5 < spread.loc["a", "high_97.5%"]
    pd.testing.assert_frame_equal(bootstrap_spread(per_user, 300, seed=1), bootstrap_spread(per_user, 300, seed=1))


def test_the_learned_ranker_serves_like_the_batch_and_handles_unknown_users_and_empty_lists(world, tmp_path):
    from recsys.ranking.learned_ranking import train_lambdarank
    from recsys.ranking.served_rankers import LearnedRanker, load_served_ranker, save_served_ranker
    from recsys.serving.recommender import rank_candidates, recommend, recommend_batch

    data = stage(world)
    ranker, _ = train_lambdarank(
        data,
        list(world["sources"].features),
        {**DEFAULTS["ranker"]["lambdarank"], "num_leaves": [3], "min_child_samples": [1]},
        0.25,
        1,
    )
    served = LearnedRanker(world["sources"], ranker)
    kwargs = {
        "store": world["store"],
        "retrieval_index": world["retriever"],
        "ranker": served,
        "n_candidates": 5,
        "ease": world["ease"],
    }
    users = [3, 987654, 1, 5]
    batch = recommend_batch(users, 4, **kwargs)
    for user in users:
        np.testing.assert_array_equal(
            batch[batch["user_id"] == user]["movie_id"], recommend(user, 4, **kwargs)["movie_id"]
        )
    assert (batch[batch["user_id"] == 987654]["source"] == "popular (unknown user)").all()
    assert batch["rank"].dtype.kind == "i" and batch["movie_id"].dtype.kind == "i"
    empty = rank_candidates(candidates_of(world).iloc[:0], 4, store=world["store"], ranker=served)
    assert empty.empty and "score" in empty.columns
    # what a run saves as its served ranker comes back scoring the same
    save_served_ranker(served, tmp_path / "ranker")
    again = load_served_ranker(tmp_path / "ranker", world["sources"], None)
    candidates = candidates_of(world)
    np.testing.assert_array_equal(again.score(candidates), served.score(candidates))
    with pytest.raises(ValueError, match="features"):
        LearnedRanker(dataclasses.replace(world["sources"], ease=None), ranker)


def test_ease_never_proposes_an_excluded_movie_even_when_few_are_left():
    weights = np.arange(25, dtype=np.float32).reshape(5, 5) / 10
    ease = EaseSource(weights, [10, 20, 30, 40, 50])
    for histories, excludes in (
        ([np.array([10])], [np.array([10, 20, 30])]),  # one request
        ([np.array([10]), np.array([20])], [np.array([10, 20, 30]), np.array([40])]),
    ):
        ids, scores = ease.top(histories, 4, excludes)
        for row, exclude in enumerate(excludes):
            kept = ids[row][ids[row] != NO_MOVIE]
            assert not np.isin(kept, exclude).any() and len(kept) == 5 - len(exclude)
            assert np.isneginf(scores[row][ids[row] == NO_MOVIE]).all()


def test_candidate_recall_table_has_a_row_per_set_and_candidates_per_user():
    from recsys.retrieval.candidates import candidate_recall_table

    retrieved = pd.DataFrame({"user_id": [1, 1, 2, 2], "movie_id": [10, 11, 20, 21], "retrieval_score": 1.0})
    sets = {"val": merge_sources(retrieved), "test": merge_sources(retrieved.iloc[:3])}
    held = {
        "val": pd.DataFrame({"user_id": [1, 2], "movie_id": [10, 20]}),
        "test": pd.DataFrame({"user_id": [2], "movie_id": [21]}),
    }
    table = candidate_recall_table(sets, held)
    assert table.index.tolist() == ["val", "test"]
    assert (
        table.loc["val", "candidate_recall_retrieval"] == 1.0 and table.loc["test", "candidate_recall_retrieval"] == 0
    )
    assert table["candidates_per_user"].tolist() == [2.0, 1.5]


def test_a_rating_model_fitted_on_val_makes_the_sources_refuse_the_val_stage(world, monkeypatch):
    from recsys.ranking.learned_ranking import with_rating_model

    monkeypatch.setattr(world["model"], "fitted_on", ("train", "val"), raising=False)  # as refitted on train + val
    leaky = with_rating_model(world["sources"], world["model"], world["encoder"], world["context"])
    assert leaky.fitted_on == {**world["sources"].fitted_on, "rating_model": ("train", "val")}
    assert world["sources"].fitted_on["rating_model"] == ("train",)  # the original sources are unchanged
    candidates = candidates_of(world, exclude="history")
    with pytest.raises(LeakageError, match="rating_model"):
        leaky.build(candidates, "val")
    store = world["store"]
    users, movies = store.user_positions(candidates["user_id"]), store.movie_positions(candidates["movie_id"])
    np.testing.assert_allclose(
        leaky.build(candidates, "test")["predicted_rating"], world["ratings"].predicted_ratings(users, movies)
    )


def test_train_rankers_fits_both_and_the_ablation_without_ease_at_the_chosen_setting():
    from recsys.ranking.learned_ranking import train_rankers

    data = planted(n_users=120, width=10)
    data.features["ease_score"] = data.features["retrieval_score"].to_numpy()
    features = ["retrieval_score", "retrieval_rank", "gender", "ease_score"]
    params = {
        **DEFAULTS["ranker"],
        "ablation": True,
        "lambdarank": {**DEFAULTS["ranker"]["lambdarank"], "num_leaves": [3, 7], "max_rounds": 20},
        "dcn": {**DEFAULTS["ranker"]["dcn"], "max_epochs": 1},
    }
    trained = train_rankers(data, features, params, seed=1)
    assert set(trained.rankers) == {"lambdarank", "dcn", "lambdarank_no_ease"}
    assert list(trained.rankers["lambdarank"].features) == features
    assert "ease_score" not in trained.rankers["lambdarank_no_ease"].features
    chosen = trained.rankers["lambdarank"].params
    assert trained.rankers["lambdarank_no_ease"].params["num_leaves"] == chosen["num_leaves"]
    assert len(trained.tuning) == 3 and trained.train_s > 0
    without = train_rankers(data, features, {**params, "ablation": False}, seed=1)
    assert set(without.rankers) == {"lambdarank", "dcn"}


def test_comparison_scores_order_each_list_as_its_source_would():
    from recsys.ranking.learned_ranking import comparison_scores

    candidates = pd.DataFrame(
        {"user_id": [1, 1, 1], "movie_id": [10, 20, 30], "retrieval_rank": [1, 2, 0], "ease_rank": [0, 2, 1]}
    )
    data = StageData(candidates, pd.DataFrame({"x": [0.1, 0.2, 0.3]}), np.zeros(3, np.float32))
    doubled = type("Doubled", (), {"predict": lambda self, features: 2 * features["x"].to_numpy()})()
    scores = comparison_scores(data, {"doubled": doubled}, np.array([3.0, 4.0, 5.0]))
    assert list(scores) == ["retrieval_only", "ease", "two_stage", "doubled"]
    np.testing.assert_array_equal(scores["retrieval_only"], [-1, -2, -np.inf])
    np.testing.assert_array_equal(scores["ease"], [-np.inf, -2, -1])
    np.testing.assert_array_equal(scores["two_stage"], [3.0, 4.0, -np.inf])  # the retriever's candidates only
    np.testing.assert_allclose(scores["doubled"], [0.2, 0.4, 0.6])


def test_stage_metrics_read_the_test_stage_and_the_learned_row():
    from recsys.ranking.learned_ranking import TrainedRankers, stage_metrics

    table = pd.DataFrame({"ndcg_at_10_std": [0.1, 0.2], "recall_at_10_std": [0.3, 0.4]}, index=["dcn", "lambdarank"])
    recall = pd.DataFrame(
        {
            "candidate_recall_retrieval": [0.5, 0.6],
            "candidate_recall_merged": [0.7, 0.8],
            "candidates_per_user": [9, 10],
        },
        index=["val", "test"],
    )
    rankers = {
        name: type("R", (), {"valid_ndcg_at_10": value})() for name, value in (("lambdarank", 0.3), ("dcn", 0.2))
    }
    metrics = stage_metrics(table, recall, "lambdarank", TrainedRankers(rankers, pd.DataFrame(), 1.5))
    assert metrics == {
        "candidate_recall_retrieval_test": 0.6,
        "candidate_recall_merged_test": 0.8,
        "candidates_per_user_test": 10.0,
        "candidate_recall_at_100": 0.6,
        "ndcg_at_10_learned_std": 0.2,
        "recall_at_10_learned_std": 0.4,
        "lambdarank_holdout_ndcg_at_10": 0.3,
        "dcn_holdout_ndcg_at_10": 0.2,
        "rankers_train_s": 1.5,
    }


def test_stage_summary_counts_candidates_users_and_the_relevant_share():
    data = planted(n_users=30, width=4)
    assert data.summary() == {
        "candidates": 120,
        "users": 30,
        "relevant_share": pytest.approx(float(data.labels.mean())),
    }
    assert data.users(np.arange(30) < 10).summary()["candidates"] == 40


def test_the_joint_score_is_the_joint_models_cosine_and_refused_at_the_val_stage_when_fitted_on_val(world):
    """joint_vectors: the joint model's retrieval vectors of the store's rows; joint_score their dot product."""
    from recsys.models.multitask_model import MultitaskConfig, build_multitask_model, movie_vectors, user_vectors
    from recsys.ranking.learned_ranking import joint_vectors

    store, encoder, (users, movies) = world["store"], world["encoder"], world["tables"]
    config = dataclasses.replace(MultitaskConfig.from_params(DEFAULTS["multitask"]), embedding_dim=4, side_dim=2)
    model = build_multitask_model(encoder.cardinalities(), config, (1.0, 1.0), 3.5)
    vectors = joint_vectors(store, model, encoder)
    expected_users = user_vectors(model, encoder, encoder.user_table(users), store.users.index.to_numpy())
    _, expected_movies = movie_vectors(model, encoder, encoder.movie_table(movies).loc[store.movies.index])
    np.testing.assert_allclose(vectors[0], expected_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[1], expected_movies, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[0], axis=1), 1.0, rtol=1e-5)  # unit vectors: a cosine
    fitted = {**world["sources"].fitted_on, "joint_model": ("train",)}
    sources = dataclasses.replace(world["sources"], joint_vectors=vectors, fitted_on=fitted)
    assert "joint_score" not in world["sources"].features
    assert sources.features.index("joint_score") == sources.features.index("predicted_rating") + 1
    candidates = candidates_of(world)
    features = sources.build(candidates, "val")
    u, m = store.user_positions(candidates["user_id"]), store.movie_positions(candidates["movie_id"])
    np.testing.assert_allclose(features["joint_score"], (vectors[0][u] * vectors[1][m]).sum(axis=1), rtol=1e-5)
    leaky = dataclasses.replace(sources, fitted_on={**fitted, "joint_model": ("train", "val")})
    with pytest.raises(LeakageError, match="joint_model"):
        leaky.build(candidates, "val")
    assert len(leaky.build(candidates, "test")) == len(candidates)  # test labels were never seen
