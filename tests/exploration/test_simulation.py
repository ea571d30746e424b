"""The closed-loop simulation: calibration, common random numbers, the rounds, and a hidden model no policy can reach."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import special

from recsys.evaluation import metrics
from recsys.exploration import hidden_preferences as hp
from recsys.exploration import simulation as sim
from recsys.exploration.reranking import standardise_rows
from recsys.exploration.simulation import PopularityPolicy, RandomPolicy
from tests.exploration.simple_policies import SimplePolicies


def tiny_world(n_users: int = 40, n_movies: int = 60, seed: int = 0):
    """A log of 5 train movies per user, and hidden preferences that favour low movie ids."""
    rng = np.random.default_rng(seed)
    user_ids, movie_ids = np.arange(1, n_users + 1) * 10, np.arange(1, n_movies + 1) * 7
    rows = [(u, m) for u in user_ids for m in rng.choice(movie_ids, 5, replace=False)]
    train = pd.DataFrame(rows, columns=["user_id", "movie_id"]).assign(rating=4.0)
    start = sim.PolicyLog.start(train, user_ids, movie_ids, np.arange(n_users))
    z = standardise_rows(np.asarray(-np.arange(n_movies)[None, :] + rng.normal(0, 5, (n_users, n_movies)), np.float32))
    return start, hp.HiddenPreferences(z, 1.0, -1.0)


def test_calibration_reproduces_both_measured_rates():
    rng = np.random.default_rng(1)
    z = standardise_rows(rng.normal(size=(200, 300)).astype(np.float32))
    reference = np.argsort(-z, axis=1)[:, :10]  # the users' favourites
    background = rng.integers(0, 300, (200, 50))
    slope, offset = hp.calibrate(z, reference, 0.35, background, 0.03)
    rows = np.arange(200)[:, None]
    assert special.expit(slope * z[rows, reference] + offset).mean() == pytest.approx(0.35, abs=1e-6)
    assert special.expit(slope * z[rows, background] + offset).mean() == pytest.approx(0.03, abs=1e-5)
    with pytest.raises(ValueError, match="background_rate"):
        hp.calibrate(z, reference, 0.01, background, 0.35)  # random movies accepted more than favourites
    with pytest.raises(ValueError, match="reference_rate must be in"):
        hp.calibrate(z, reference, 1.5, background, 0.01)


def test_acceptance_draws_are_common_to_policies_and_fixed_by_seed_and_round():
    users, movies = np.repeat([[1], [2]], 3, axis=1), np.array([[5, 6, 7], [5, 6, 7]])
    draws = sim.acceptance_draws(3, 0, users, movies)
    assert draws.shape == (2, 3) and ((draws >= 0) & (draws < 1)).all()
    np.testing.assert_array_equal(draws, sim.acceptance_draws(3, 0, users, movies))
    # a pair's draw does not depend on what else was shown beside it
    assert sim.acceptance_draws(3, 0, np.array([2]), np.array([6]))[0] == draws[1, 1]
    assert not np.array_equal(draws, sim.acceptance_draws(3, 1, users, movies))
    assert not np.array_equal(draws, sim.acceptance_draws(4, 0, users, movies))
    many = sim.acceptance_draws(0, 0, np.arange(200)[:, None], np.tile(np.arange(500), (200, 1)))
    assert abs(many.mean() - 0.5) < 0.01 and abs((many < 0.1).mean() - 0.1) < 0.01


def test_gini_of_exposure():
    # the rounds measure exposure with the project's one Gini (metrics.gini_index) over the round's lists
    assert metrics.gini_index(np.arange(10)[:, None], 10, k=1) == pytest.approx(0.0)
    assert metrics.gini_index(np.zeros((4, 1), np.int64), 10, k=1) == pytest.approx(0.9)  # one movie takes all


def test_rounds_rerun_identically_and_each_policy_keeps_its_own_log():
    start, hidden = tiny_world()
    popularity = np.full(len(start.movie_ids), 0.5)

    def run(seed):
        return sim.simulate(
            {"popularity": PopularityPolicy(), "random": RandomPolicy()}, hidden, start, 4, 5, seed, popularity
        )

    rounds, logs = run(7)
    again, _ = run(7)
    pd.testing.assert_frame_equal(rounds.drop(columns="policy_s"), again.drop(columns="policy_s"))
    other, _ = run(8)
    assert not rounds["accepted_per_user"].equals(other["accepted_per_user"])
    assert len(rounds) == 8 and set(sim.MEASURES) <= set(rounds.columns)
    assert start.accepted.empty and start.matrix.nnz == 5 * 40  # the starting log is never changed
    for log in logs.values():
        assert not log.accepted.duplicated(["user_id", "movie_id"]).any()  # a movie is accepted once
        assert log.matrix.nnz == start.matrix.nnz + len(log.accepted)
    assert not logs["popularity"].accepted.equals(logs["random"].accepted)
    final = sim.summary(rounds)
    assert final.loc["random", "coverage_final"] > final.loc["popularity", "coverage_final"]
    by_policy = rounds.groupby("policy")
    np.testing.assert_allclose(
        by_policy["accepted_per_user"].sum(), by_policy["cumulative_accepted_per_user"].last(), rtol=1e-12
    )
    accepted = logs["random"].accepted
    assert (accepted["round"].between(1, 4)).all()


class FixedPolicy:
    def __init__(self, lists):
        self.lists = lists

    def update(self, log):
        pass

    def recommend(self, log, k, rng):
        return self.lists(log)


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        (lambda log: np.zeros((len(log.active), 5), np.int64), "twice"),
        (lambda log: np.zeros((3, 5), np.int64), "expected"),
        (lambda log: np.full((len(log.active), 5), 10_000), "outside the catalogue"),
        (lambda log: np.tile(log.matrix[0].indices[:5], (len(log.active), 1)), "already seen"),
    ],
)
def test_an_invalid_list_is_refused(lists, message):
    start, hidden = tiny_world()
    with pytest.raises(sim.PolicyError, match=message):
        sim.simulate({"bad": FixedPolicy(lists)}, hidden, start, 1, 5, 0, np.ones(len(start.movie_ids)))


def _reachable(roots, limit: int = 200_000) -> list:
    """Every object reachable from `roots` through references (breadth first, at most `limit` objects)."""
    seen, queue, found = set(), list(roots), []
    while queue and len(seen) < limit:
        obj = queue.pop()
        if id(obj) in seen or isinstance(obj, type):  # classes lead to every module: not a policy's data
            continue
        seen.add(id(obj))
        found.append(obj)
        queue.extend(gc.get_referents(obj))
    return found


def _holds_hidden(objects, hidden) -> bool:
    return any(
        obj is hidden or obj is hidden.z or (isinstance(obj, np.ndarray) and np.shares_memory(obj, hidden.z))
        for obj in objects
    )


class SpyPolicy(RandomPolicy):
    """Walks everything its calls receive, looking for the hidden model."""

    def __init__(self):
        self.reached = []

    def update(self, log):
        self.reached.extend(_reachable([self, log]))

    def recommend(self, log, k, rng):
        self.reached.extend(_reachable([self, log, rng]))
        return super().recommend(log, k, rng)


def test_no_policy_can_reach_the_hidden_model():
    start, hidden = tiny_world()
    spy = SpyPolicy()
    sim.simulate({"spy": spy}, hidden, start, 2, 5, 0, np.ones(len(start.movie_ids)))
    assert spy.reached and any(obj is start.matrix for obj in spy.reached)  # it did walk its log
    assert not _holds_hidden(spy.reached, hidden)
    # the walk would find it if a log carried it (the test can fail)
    assert _holds_hidden(_reachable([{"leak": SimpleNamespace(preferences=hidden)}]), hidden)
    assert _holds_hidden(_reachable([[hidden.z[:3]]]), hidden)  # a view of its scores counts too


def test_a_log_cannot_be_changed_in_place():
    start, _ = tiny_world()
    with pytest.raises(ValueError, match="read-only"):
        start.matrix.data[0] = 5.0
    grown = start.with_accepted(np.array([0]), np.array([int(np.flatnonzero(start.matrix[0].toarray()[0] == 0)[0])]), 1)
    with pytest.raises(ValueError, match="read-only"):
        grown.matrix.indices[0] = 0


# ---- calibration on the run's data ------------------------------------------------------------------


def test_simulated_users_are_those_with_train_interactions_or_a_seeded_sample():
    train = pd.DataFrame({"user_id": [30, 10, 10, 50, 70]})
    user_ids = np.array([10, 20, 30, 40, 50, 60, 70])
    np.testing.assert_array_equal(sim.simulated_users(train, user_ids, 0, seed=0), [0, 2, 4, 6])
    np.testing.assert_array_equal(sim.simulated_users(train, user_ids, 10, seed=0), [0, 2, 4, 6])  # fewer: all
    sample = sim.simulated_users(train, user_ids, 2, seed=3)
    assert len(sample) == 2 and set(sample) <= {0, 2, 4, 6} and sample[0] < sample[1]
    np.testing.assert_array_equal(sample, sim.simulated_users(train, user_ids, 2, seed=3))


def test_random_unseen_movies_are_unseen_distinct_seeded_and_the_random_policy_s():
    start, _ = tiny_world()
    drawn = sim.random_unseen(start, 20, np.random.default_rng(4))
    assert drawn.shape == (40, 20) and all(len(set(row)) == 20 for row in drawn)
    assert not start.matrix[start.active[:, None], drawn].count_nonzero()
    np.testing.assert_array_equal(drawn, sim.random_unseen(start, 20, np.random.default_rng(4)))
    np.testing.assert_array_equal(drawn, RandomPolicy().recommend(start, 20, np.random.default_rng(4)))


def test_measured_rates_on_a_hand_made_log():
    # user 1: train movies 10, 20, later 30, 40; user 2: train 10, later 60 (catalogue of 6 movies)
    rows = [(1, 10, "train"), (1, 20, "train"), (1, 30, "val"), (1, 40, "test"), (2, 10, "train"), (2, 60, "test")]
    interactions = pd.DataFrame(rows, columns=["user_id", "movie_id", "split"]).assign(rating=4.0)
    ids = ([1, 2], [10, 20, 30, 40, 50, 60], [0, 1])
    start = sim.PolicyLog.start(interactions[interactions["split"] == "train"], *ids)
    everything = sim.PolicyLog.start(interactions, *ids).matrix
    reference = np.array([[2, 4], [1, 5]])  # user 1: 30 (later), 50; user 2: 20, 60 (later)
    reference_rate, background_rate = hp.measured_rates(everything, start, reference)
    assert reference_rate == pytest.approx(0.5)  # 2 of the 4 listed movies were watched later
    assert background_rate == pytest.approx((2 / 4 + 1 / 5) / 2)  # later movies over unseen ones, per user


def skewed_interactions(n_users: int = 80, n_movies: int = 60, seed: int = 0) -> pd.DataFrame:
    """Every user watches 12 movies, popular (low) ids more often: 8 in train, then 2 in val and 2 in test."""
    rng = np.random.default_rng(seed)
    p = np.exp(-np.arange(n_movies) / 12)
    rows = []
    for user in range(1, n_users + 1):
        movies = rng.choice(n_movies, 12, replace=False, p=p / p.sum()) + 1
        rows += [(user, movie, split) for movie, split in zip(movies, ["train"] * 8 + ["val"] * 2 + ["test"] * 2)]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "split"]).assign(rating=4.0)


@pytest.mark.parametrize("model", hp.HIDDEN_MODELS)
def test_every_hidden_model_reproduces_the_rates_measured_on_test(model):
    interactions = skewed_interactions()
    user_ids, movie_ids = np.arange(1, 81), np.arange(1, 61)
    known = interactions[interactions["split"].isin(["train", "val"])]  # the world starts from train + val
    start = sim.PolicyLog.start(known, user_ids, movie_ids, np.arange(80))
    popular = PopularityPolicy()
    popular.update(start)
    reference = popular.recommend(start, 5, np.random.default_rng(0))
    everything = sim.PolicyLog.start(interactions, user_ids, movie_ids, start.active).matrix
    hidden, calibration = hp.hidden_preferences(
        everything, start, reference, model, ease_l2=10.0, svd_rank=8, background_size=20, seed=1
    )
    measured = hp.measured_rates(everything, start, reference)
    assert (calibration.reference_rate, calibration.background_rate) == measured
    # the rates count test hits only: the val movies are in the start log, so never "later"
    test_only = sim.PolicyLog.start(interactions[interactions["split"] == "test"], user_ids, movie_ids, start.active)
    hits = test_only.matrix[start.active][np.arange(80)[:, None], reference].toarray()
    assert measured[0] == pytest.approx(hits.mean())
    np.testing.assert_array_equal(calibration.background, sim.random_unseen(start, 20, np.random.default_rng(1)))
    assert hidden.probability(start.active, reference).mean() == pytest.approx(measured[0], abs=1e-6)
    assert hidden.probability(start.active, calibration.background).mean() == pytest.approx(measured[1], abs=1e-5)
    assert hidden.z.dtype == np.float32 and hidden.z.shape == (80, 60) and hidden.name == model
    np.testing.assert_allclose(hidden.z.mean(axis=1), 0, atol=1e-5)


def test_the_two_hidden_models_are_different_worlds_and_each_is_reproducible():
    interactions = skewed_interactions()
    everything = sim.PolicyLog.start(interactions, np.arange(1, 81), np.arange(1, 61), np.arange(80)).matrix
    ease = hp.hidden_scores(everything, "ease", 10.0, 8, seed=1)
    svd = hp.hidden_scores(everything, "puresvd", 10.0, 8, seed=1)
    np.testing.assert_array_equal(svd, hp.hidden_scores(everything, "puresvd", 10.0, 8, seed=1))
    assert not np.allclose(ease, svd, atol=0.1)
    # PureSVD of rank r: X V Vᵀ with V the top r right singular vectors
    dense = everything.toarray().astype(np.float64)
    vt = np.linalg.svd(dense, full_matrices=False)[2][:8]
    np.testing.assert_allclose(svd, standardise_rows((dense @ vt.T @ vt).astype(np.float32)), atol=1e-3)
    with pytest.raises(ValueError, match="hidden_svd_rank"):
        hp.hidden_scores(everything, "puresvd", 10.0, 60, seed=1)
    with pytest.raises(ValueError, match="hidden model must be one of"):
        hp.hidden_scores(everything, "mf", 10.0, 8, seed=1)
    with pytest.raises(ValueError, match="hidden_models"):
        hp.calibrated_worlds(everything, None, None, ["ease", "bpr"], ease_l2=1, svd_rank=2, background_size=5, seed=0)


def test_a_sequential_retriever_reads_the_log_s_timeline_with_accepted_movies_last():
    train = pd.DataFrame(
        {"user_id": [1, 1, 2], "movie_id": [10, 20, 10], "rating": [4.0, 2.0, 5.0], "position": [0, 1, 0]}
    )
    start = sim.PolicyLog.start(train, [1, 2], [10, 20, 30, 40], [0, 1])
    log = start.with_accepted(np.array([0, 0, 1]), np.array([3, 2, 1]), 1)
    timeline = log.timeline()
    user_1 = timeline[timeline["user_id"] == 1].sort_values("position")
    assert user_1["movie_id"].tolist() == [10, 20, 40, 30]  # the start's timeline, then accepted in order
    assert user_1["rating"].isna().tolist() == [False, False, True, True]
    assert "position" not in log.interactions().columns  # the feature store's table
    with pytest.raises(ValueError, match="no `position` column"):
        sim.PolicyLog.start(train.drop(columns="position"), [1, 2], [10, 20, 30, 40], [0, 1]).timeline()


def test_calibration_is_measured_and_matched_on_the_users_with_a_later_movie():
    interactions = skewed_interactions()
    stopped = interactions["user_id"] <= 20  # 20 users with no test movie, as a global time split leaves them
    interactions = interactions[~(stopped & (interactions["split"] == "test"))]
    user_ids, movie_ids = np.arange(1, 81), np.arange(1, 61)
    start = sim.PolicyLog.start(interactions[interactions["split"] != "test"], user_ids, movie_ids, np.arange(80))
    popular = PopularityPolicy()
    popular.update(start)
    reference = popular.recommend(start, 5, np.random.default_rng(0))
    everything = sim.PolicyLog.start(interactions, user_ids, movie_ids, start.active).matrix
    seen_later = hp.observed(everything, start)
    assert seen_later.tolist() == [False] * 20 + [True] * 60
    tests = sim.PolicyLog.start(interactions[interactions["split"] == "test"], user_ids, movie_ids, start.active)
    hits = tests.matrix[start.active][np.arange(80)[:, None], reference].toarray()
    reference_rate, _ = hp.measured_rates(everything, start, reference)
    assert reference_rate == pytest.approx(hits[20:].mean())  # the stopped users' zeros do not dilute it
    hidden, calibration = hp.hidden_preferences(
        everything, start, reference, "ease", ease_l2=10.0, svd_rank=8, background_size=20, seed=1
    )
    assert calibration.observed.tolist() == seen_later.tolist()
    matched = hidden.probability(start.active[20:], reference[20:]).mean()
    assert matched == pytest.approx(reference_rate, abs=1e-6)
    table = hp.calibration_table({"ease": (hidden, calibration)}, start, reference)
    assert table.loc["ease", "users calibrated on"] == 60
    assert table.loc["ease", "served round 0, model"] == pytest.approx(reference_rate, abs=1e-6)


def test_simulations_in_processes_give_the_rows_of_one_process():
    start, ease_like = tiny_world()
    other = hp.HiddenPreferences(ease_like.z[:, ::-1].copy(), 1.5, -2.0, "puresvd")
    worlds, popularity = {"ease": ease_like, "puresvd": other}, np.full(len(start.movie_ids), 0.5)
    alone, alone_s = sim.simulate_worlds(SimplePolicies(), worlds, start, 3, 5, [7, 8, 9], popularity)
    side_by_side, side_s = sim.simulate_worlds(
        SimplePolicies(), worlds, start, 3, 5, [7, 8, 9], popularity, processes=2
    )
    pd.testing.assert_frame_equal(alone.drop(columns="policy_s"), side_by_side.drop(columns="policy_s"))
    assert list(alone.drop_duplicates(["hidden", "seed"])[["hidden", "seed"]].itertuples(index=False)) == [
        ("ease", 7),
        ("ease", 8),
        ("ease", 9),
        ("puresvd", 7),
        ("puresvd", 8),
        ("puresvd", 9),
    ]
    assert set(alone_s) == set(side_s) == {"ease", "puresvd"} and all(s > 0 for s in side_s.values())
    assert not start.matrix.data.flags.writeable  # the parent's start log is still locked
    with pytest.raises(ValueError, match="processes must be at least 1"):
        sim.simulate_worlds(SimplePolicies(), worlds, start, 3, 5, [7], popularity, processes=0)


def test_two_stage_policies_share_the_state_of_round_zero(monkeypatch):
    from recsys.exploration.simulation_policies import ServingParts, TwoStagePolicy

    start, _ = tiny_world()
    made = []
    monkeypatch.setattr(ServingParts, "updated_state", lambda self, log: made.append(log) or (log, len(made), None))
    tables = {"users": pd.DataFrame({"user_id": start.user_ids}), "movies": pd.DataFrame({"movie_id": start.movie_ids})}
    parts = ServingParts(
        **tables,
        user_vectors=None,
        movie_vectors=np.zeros((60, 2)),
        ranker=None,
        predicted_rating=None,
        rating_fitted_on=(),
        ease_l2=1.0,
        n_candidates=10,
    )
    first, second = TwoStagePolicy(parts), TwoStagePolicy(parts)
    first.update(start)
    second.update(start)
    assert len(made) == 1 and first._store is second._store  # made once for every policy (and run) from this start
    grown = start.with_accepted(np.array([0]), np.array([int(np.flatnonzero(start.matrix[0].toarray()[0] == 0)[0])]), 1)
    first.update(grown)
    assert made[-1] is grown and first._store == 2  # a later round's log is the policy's own
    with pytest.raises(ValueError, match="round 0"):
        parts.start_state(grown)
    other_start, _ = tiny_world(seed=1)
    TwoStagePolicy(parts).update(other_start)
    assert made[-1] is other_start  # another start: its own state


def test_a_policy_factory_travels_without_its_loaded_parts(tmp_path):
    import pickle

    from recsys.exploration.simulation_policies import PolicyFactory, serving_artifacts

    tables = {name: tmp_path / f"{name}.parquet" for name in ("users", "movies", "interactions")}
    retrieval = {"model": "sequential", "min_rating": 4}
    saved = {name: tmp_path / name for name in serving_artifacts(retrieval)}
    assert {"sequential_model", "ease_model", "ranker", "rating_model_train"} <= set(saved)
    loaded = object()  # stands for ServingParts loaded in this process
    factory = PolicyFactory(tables, saved, {"n_candidates": 10}, retrieval, {"served": None}, loaded)
    assert factory.serving_parts() is loaded
    travelled = pickle.loads(pickle.dumps(factory))
    assert travelled.parts is None and travelled.artifacts == saved and travelled.explorations == {"served": None}
    with pytest.raises(ValueError, match="lacks the paths of \\['retrieval_model'"):
        PolicyFactory(tables, saved, {}, {"model": "two_tower"}, {})


def test_the_served_paths_joint_candidates_come_from_the_joint_models_vectors_made_once():
    from recsys.exploration.simulation_policies import ServingParts
    from recsys.retrieval.candidates import VectorSource

    start, _ = tiny_world()
    rng = np.random.default_rng(2)
    joint = rng.normal(size=(len(start.user_ids), 3)), rng.normal(size=(len(start.movie_ids), 3))
    tables = {"users": pd.DataFrame({"user_id": start.user_ids}), "movies": pd.DataFrame({"movie_id": start.movie_ids})}
    common = {
        "user_vectors": None,
        "movie_vectors": np.zeros((len(start.movie_ids), 2)),
        "ranker": None,
        "predicted_rating": None,
        "rating_fitted_on": (),
        "ease_l2": 1.0,
        "n_candidates": 10,
    }
    parts = ServingParts(**tables, **common, joint_vectors=joint, joint_candidates=True)
    source = parts.joint_source()
    assert isinstance(source, VectorSource) and parts.joint_source() is source  # fitted on train: made once
    user = int(start.user_ids[3])
    ids, _ = source.top([user], 5, [np.array([], np.int64)])
    np.testing.assert_array_equal(ids[0], start.movie_ids[np.argsort(-(joint[1] @ joint[0][3]), kind="stable")[:5]])
    assert ServingParts(**tables, **common, joint_vectors=joint).joint_source() is None  # joint_candidates off
    with pytest.raises(ValueError, match="joint_candidates needs the joint model's vectors"):
        ServingParts(**tables, **common, joint_candidates=True).joint_source()
