"""Splits (DESIGN §5): complete and disjoint, per-user proportions, seeded, temporal order, global cut-offs, bad params."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.features.splits import (
    SPLIT_STRATEGIES,
    SplitError,
    assign_split,
    drop_sparse_users,
    foldin_users,
    held_out_for_sample,
    new_movies,
    tie_break_key,
    timeline_position,
)


def make_ratings(sizes: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """Ratings for users with the given counts, rows shuffled, with distinct shuffled timestamps per user."""
    rng = np.random.default_rng(seed)
    user_id = np.repeat(list(sizes), list(sizes.values())).astype("int32")
    frame = pd.DataFrame(
        {
            "user_id": user_id,
            "movie_id": np.arange(len(user_id), dtype="int32"),
            "rating": rng.integers(1, 6, len(user_id)).astype("int8"),
            "timestamp": rng.permutation(len(user_id)).astype("int64") + 1_000_000,
        }
    )
    shuffled = frame.sample(frac=1, random_state=seed)
    return shuffled.set_axis(np.arange(len(shuffled)) * 3 + 100)  # an index that is not 0..n-1


SIZES = {1: 100, 2: 40, 3: 20, 4: 10, 5: 5, 6: 3, 7: 2, 8: 1, 9: 57}


def counts_per_user(ratings: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    return pd.crosstab(ratings["user_id"], split).reindex(columns=["train", "val", "test"], fill_value=0)


PER_USER_STRATEGIES = [name for name in SPLIT_STRATEGIES if name != "global_temporal"]


@pytest.mark.parametrize("strategy", PER_USER_STRATEGIES)
def test_split_is_complete_disjoint_and_aligned(strategy):
    ratings = make_ratings(SIZES)
    split = assign_split(ratings, strategy=strategy)
    assert split.index.equals(ratings.index)
    assert split.notna().all()
    assert set(split.unique()) == {"train", "val", "test"}
    assert list(split.cat.categories) == ["train", "val", "test"]
    counts = counts_per_user(ratings, split)
    assert (counts.sum(axis=1) == pd.Series(SIZES).rename_axis("user_id")).all()
    assert (counts["train"] >= 1).all()  # every user with ratings is seen in training


def test_random_split_proportions_per_user():
    ratings = make_ratings(SIZES)
    counts = counts_per_user(ratings, assign_split(ratings, "random", val_share=0.1, test_share=0.1))
    assert counts.loc[1].tolist() == [80, 10, 10]
    assert counts.loc[2].tolist() == [32, 4, 4]
    assert counts.loc[9].tolist() == [45, 6, 6]  # 5.7 rounds to 6
    assert counts.loc[5].tolist() == [3, 1, 1]  # 0.5 rounds up
    assert counts.loc[6].tolist() == [1, 1, 1]  # 3 ratings: one in each split
    assert counts.loc[7].tolist() == [2, 0, 0]  # fewer than 3: all in train
    assert counts.loc[8].tolist() == [1, 0, 0]


def test_random_split_overall_near_80_10_10():
    ratings = make_ratings({user: 20 + user % 37 for user in range(300)})
    shares = assign_split(ratings).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.01)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert shares["test"] == pytest.approx(0.1, abs=0.01)


def test_random_split_keeps_train_when_shares_are_large():
    ratings = make_ratings({1: 3, 2: 10, 3: 2})
    counts = counts_per_user(ratings, assign_split(ratings, val_share=0.45, test_share=0.5))
    assert counts.loc[1].tolist() == [1, 1, 1]
    assert counts.loc[2].tolist() == [1, 4, 5]
    assert counts.loc[3, "train"] >= 1


def test_zero_val_share_gives_no_val():
    ratings = make_ratings(SIZES)
    split = assign_split(ratings, val_share=0.0, test_share=0.2)
    assert (split == "val").sum() == 0
    assert counts_per_user(ratings, split).loc[1].tolist() == [80, 0, 20]


def test_random_split_is_deterministic_per_seed():
    ratings = make_ratings(SIZES)
    first = assign_split(ratings, seed=7)
    assert first.equals(assign_split(ratings, seed=7))
    other = assign_split(ratings, seed=8)
    assert not first.equals(other)
    # Another seed picks other ratings but the same number per user.
    assert counts_per_user(ratings, first).equals(counts_per_user(ratings, other))


def test_leave_last_out_holds_out_the_latest():
    ratings = make_ratings(SIZES)
    split = assign_split(ratings, strategy="leave_last_out")
    ordered = ratings.assign(split=split).sort_values(["user_id", "timestamp"])
    for _, group in ordered.groupby("user_id"):
        labels = group["split"].tolist()
        if len(group) >= 3:
            assert labels[-1] == "test" and labels[-2] == "val" and set(labels[:-2]) == {"train"}
        elif len(group) == 2:
            assert labels == ["train", "test"]
        else:
            assert labels == ["train"]


def test_temporal_split_takes_the_shares_from_the_end_of_each_timeline():
    ratings = make_ratings(SIZES)
    temporal = assign_split(ratings, "temporal", val_share=0.2, test_share=0.1)
    # the same per-user counts as the random split, only chosen by time
    assert counts_per_user(ratings, temporal).equals(
        counts_per_user(ratings, assign_split(ratings, "random", val_share=0.2, test_share=0.1))
    )
    frame = ratings.assign(split=temporal, position=timeline_position(ratings, 42))
    for _, group in frame.groupby("user_id"):
        stamp = group.groupby("split", observed=True)["timestamp"]
        if {"train", "test"} <= set(group["split"]):
            assert stamp.max()["train"] < stamp.min()["test"]
        if {"val", "test"} <= set(group["split"]):
            assert stamp.max()["val"] < stamp.min()["test"]
            assert stamp.max()["train"] < stamp.min()["val"]


def test_temporal_ties_follow_the_seeded_rule_not_the_row_order():
    # one user, ten ratings in the same second: the order is the hash of (seed, user, movie)
    ratings = pd.DataFrame(
        {"user_id": 7, "movie_id": np.arange(10) * 13 + 1, "rating": 4, "timestamp": [5] + [9] * 9}, index=range(10)
    )
    split = assign_split(ratings, "temporal", val_share=0.2, test_share=0.2, seed=3)
    key = tie_break_key(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy(), 3)
    tied = ratings.index[1:][np.argsort(key[1:])]  # the tied ratings, earliest first by the rule
    assert split[tied[-2:]].tolist() == ["test", "test"] and split[tied[-4:-2]].tolist() == ["val", "val"]
    assert split[0] == "train"  # the only earlier timestamp
    shuffled = ratings.sample(frac=1, random_state=1)
    assert assign_split(shuffled, "temporal", 0.2, 0.2, seed=3).loc[split.index].equals(split)
    # the rule depends on the seed: another seed orders the ties differently
    other = assign_split(ratings, "temporal", 0.2, 0.2, seed=4)
    assert not other.equals(split) and counts_per_user(ratings, other).equals(counts_per_user(ratings, split))


def global_order(ratings: pd.DataFrame, seed: int) -> pd.Index:
    """The ratings' index in the order of time, equal timestamps by the tie rule: what the global cut-offs cut."""
    key = tie_break_key(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy(), seed)
    return ratings.index[np.lexsort((key, ratings["timestamp"].to_numpy()))]


def test_global_temporal_puts_every_val_and_test_rating_after_every_train_rating():
    ratings = make_ratings(SIZES | dict.fromkeys(range(10, 60), 12))
    ratings["timestamp"] //= 7  # many ties, some of them across a cut-off
    split = assign_split(ratings, "global_temporal", val_share=0.15, test_share=0.1, seed=5)
    assert split.index.equals(ratings.index) and list(split.cat.categories) == ["train", "val", "test"]
    labelled = split[global_order(ratings, 5)].dropna()
    ranks = {"train": 0, "val": 1, "test": 2}
    assert labelled.map(ranks).astype(int).is_monotonic_increasing  # strictly after, ties by the rule
    stamps = ratings.loc[labelled.index, "timestamp"].groupby(labelled, observed=True)
    assert stamps.max()["train"] <= stamps.min()["val"] and stamps.max()["val"] <= stamps.min()["test"]
    # the shares are of the labelled ratings (the users with a train rating)
    shares = split.value_counts(normalize=True)
    assert abs(shares["test"] - 0.1) < 0.02 and abs(shares["val"] - 0.15) < 0.02
    # and every user's own timeline agrees: train, then val, then test
    frame = ratings.assign(split=split.map(ranks), position=timeline_position(ratings, 5)).dropna()
    for _, group in frame.sort_values("position").groupby("user_id"):
        assert group["split"].is_monotonic_increasing


def test_global_temporal_leaves_users_without_a_train_rating_unscored():
    # user 1 rates early and late, user 2 only after the first cut-off, user 3 only before it
    ratings = pd.DataFrame(
        {
            "user_id": [1] * 8 + [2] * 2 + [3] * 10,
            "movie_id": np.arange(20),
            "timestamp": [0, 1, 2, 3, 4, 5, 20, 22] + [21, 23] + list(range(6, 16)),
        }
    )
    split = assign_split(ratings, "global_temporal", val_share=0.1, test_share=0.1, seed=1)
    # users 1 and 3 (18 ratings) can be scored; the first cut-off leaves 4 of their 18 after it (22%, the
    # closest to 20%): user 3's times 14 and 15 and user 1's 20 and 22; the latest 2 of those to test
    assert split[ratings["user_id"] == 1].tolist() == ["train"] * 6 + ["test", "test"]
    assert split[ratings["user_id"] == 2].isna().all()  # no train rating: cannot be scored, not evaluated
    assert split[ratings["user_id"] == 3].tolist() == ["train"] * 8 + ["val", "val"]


def test_global_temporal_holds_its_shares_of_the_labelled_ratings_when_many_users_arrive_late():
    # 300 users, each rating in one burst at a random start: cutting the latest 20% of all ratings would leave
    # the users who stay with far less than 20% held out; the cut-offs are placed for the labelled ratings
    rng = np.random.default_rng(0)
    starts, sizes = rng.uniform(0, 1e6, 300).astype(int), rng.integers(20, 60, 300)
    ratings = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(300), sizes),
            "movie_id": np.concatenate([np.arange(s) for s in sizes]),
            "timestamp": np.concatenate([start + rng.integers(0, 3e5, s) for start, s in zip(starts, sizes)]),
        }
    )
    split = assign_split(ratings, "global_temporal", val_share=0.1, test_share=0.1, seed=2)
    shares = split.value_counts(normalize=True)
    assert abs(shares["test"] - 0.1) < 0.01 and abs(shares["val"] - 0.1) < 0.01
    assert split.isna().any()  # the late users
    labelled = split.dropna()
    stamps = ratings.loc[labelled.index, "timestamp"].groupby(labelled, observed=True)
    assert stamps.max()["train"] <= stamps.min()["val"] and stamps.max()["val"] <= stamps.min()["test"]


def test_global_temporal_ties_at_a_cut_off_follow_the_seeded_rule_not_the_row_order():
    # 4 users x 5 ratings: 10 at distinct early times, the other 10 in one second across both cut-offs
    ratings = pd.DataFrame(
        {"user_id": np.repeat([1, 2, 3, 4], 5), "movie_id": np.arange(20) * 7 + 1, "timestamp": [100] * 20}
    )
    ratings.loc[ratings["movie_id"] % 2 == 1, "timestamp"] = np.arange(10)  # even index rows: early
    split = assign_split(ratings, "global_temporal", val_share=0.2, test_share=0.2, seed=3)
    tied = ratings.index[ratings["timestamp"] == 100]
    key = tie_break_key(ratings.loc[tied, "user_id"].to_numpy(), ratings.loc[tied, "movie_id"].to_numpy(), 3)
    by_rule = tied[np.argsort(key)]  # the tied ratings, earliest first by the rule
    assert split[by_rule].tolist() == ["train"] * 2 + ["val"] * 4 + ["test"] * 4  # 4 of 20 each, from the end
    assert (split[ratings["timestamp"] < 100] == "train").all()
    shuffled = ratings.sample(frac=1, random_state=1)
    assert assign_split(shuffled, "global_temporal", 0.2, 0.2, seed=3).loc[split.index].equals(split)
    assert assign_split(ratings, "global_temporal", 0.2, 0.2, seed=3).equals(split)  # deterministic
    other = assign_split(ratings, "global_temporal", 0.2, 0.2, seed=4)
    assert not other.equals(split)  # another seed orders the ties differently


def test_global_temporal_eval_sample_keeps_train_free_of_later_ratings():
    ratings = make_ratings(dict.fromkeys(range(1, 41), 30))
    split = assign_split(ratings, "global_temporal", 0.1, 0.1, seed=3)
    scorable = set(ratings.loc[split.isin(["val", "test"]), "user_id"])
    excluded = np.array(sorted(scorable)[:5])
    kept = held_out_for_sample(split, ratings["user_id"], 10, 3, excluded=excluded, strategy="global_temporal")
    evaluated = set(ratings.loc[kept.isin(["val", "test"]), "user_id"])
    assert len(evaluated) == 10 and evaluated <= scorable and not evaluated & set(excluded)
    assert kept[split == "train"].eq("train").all()  # train is untouched...
    assert kept[kept == "train"].index.equals(split[split == "train"].index)  # ...and gains nothing later
    others = ~ratings["user_id"].isin(evaluated) & split.isin(["val", "test"])
    assert kept[others].isna().all()  # the others' held-out ratings: no label (dropped by the caller)
    assert held_out_for_sample(split, ratings["user_id"], 0, 3, strategy="global_temporal") is split


def test_timeline_position_orders_by_time_then_the_tie_rule():
    ratings = make_ratings({1: 30, 2: 12})
    ratings.loc[ratings.index[:10], "timestamp"] = 1  # ties across both users
    position = timeline_position(ratings, 42)
    frame = ratings.assign(position=position).sort_values(["user_id", "position"])
    for _, group in frame.groupby("user_id"):
        assert group["position"].tolist() == list(range(len(group)))
        assert group["timestamp"].is_monotonic_increasing
    assert timeline_position(ratings.iloc[::-1], 42).loc[position.index].equals(position)


def test_held_out_ratings_can_be_kept_for_a_seeded_sample_of_users_only():
    ratings = make_ratings(dict.fromkeys(range(1, 41), 30))
    split = assign_split(ratings, "random", 0.1, 0.1, seed=3)
    assert held_out_for_sample(split, ratings["user_id"], 0, 3) is split
    assert held_out_for_sample(split, ratings["user_id"], 40, 3) is split
    kept = held_out_for_sample(split, ratings["user_id"], 12, 3)
    assert kept.index.equals(split.index) and list(kept.cat.categories) == ["train", "val", "test"]
    per_user = counts_per_user(ratings, kept)
    evaluated = per_user[(per_user["val"] > 0) | (per_user["test"] > 0)]
    assert len(evaluated) == 12
    before = counts_per_user(ratings, split)
    pd.testing.assert_frame_equal(per_user.loc[evaluated.index], before.loc[evaluated.index])  # untouched
    assert (per_user.drop(index=evaluated.index)["train"] == 30).all()  # the others: every rating in train
    again = counts_per_user(ratings, held_out_for_sample(split, ratings["user_id"], 12, 3))
    pd.testing.assert_frame_equal(again, per_user)
    other = counts_per_user(ratings, held_out_for_sample(split, ratings["user_id"], 12, 4))
    assert not other.equals(per_user)
    # users excluded from the draw (the fold-in users) never keep held-out ratings
    excluded = np.arange(1, 21)
    sampled = counts_per_user(ratings, held_out_for_sample(split, ratings["user_id"], 12, 3, excluded=excluded))
    drawn = sampled[(sampled["val"] > 0) | (sampled["test"] > 0)].index
    assert len(drawn) == 12 and not set(drawn) & set(excluded)
    with pytest.raises(SplitError, match="eval_users must be >= 0"):
        held_out_for_sample(split, ratings["user_id"], -1, 3)


def test_foldin_users_are_seeded_and_sized():
    users = np.repeat(np.arange(1, 201), 3)
    drawn = foldin_users(users, 0.1, 42)
    assert len(drawn) == 20 and np.all(np.diff(drawn) > 0) and np.isin(drawn, users).all()
    assert np.array_equal(drawn, foldin_users(users[::-1], 0.1, 42))
    assert not np.array_equal(drawn, foldin_users(users, 0.1, 43))
    assert len(foldin_users(users, 0.0, 42)) == 0
    with pytest.raises(SplitError, match="split.foldin_share"):
        foldin_users(users, 1.0, 42)


def test_new_movies_are_seeded_sized_and_drawn_among_well_rated_movies():
    # movies 1..40 rated 25 times, 41..60 rated 5 times: only the first 40 are eligible at 20 ratings
    movie_ids = np.concatenate([np.repeat(np.arange(1, 41), 25), np.repeat(np.arange(41, 61), 5)])
    drawn = new_movies(movie_ids, 0.1, 20, 42)
    assert len(drawn) == 4 and np.all(np.diff(drawn) > 0) and drawn.max() <= 40
    assert np.array_equal(drawn, new_movies(movie_ids[::-1], 0.1, 20, 42))
    assert not np.array_equal(drawn, new_movies(movie_ids, 0.1, 20, 43))
    assert len(new_movies(movie_ids, 0.0, 20, 42)) == 0 and len(new_movies(movie_ids, 0.5, 26, 42)) == 0
    assert len(new_movies(movie_ids, 0.1, 5, 42)) == 6  # 60 eligible at 5 ratings
    with pytest.raises(SplitError, match="split.new_movie_share"):
        new_movies(movie_ids, 1.0, 20, 42)
    with pytest.raises(SplitError, match="split.new_movie_min_ratings"):
        new_movies(movie_ids, 0.1, 0, 42)


def test_empty_ratings_give_an_empty_split():
    empty = make_ratings({1: 3}).iloc[:0]
    assert all(len(assign_split(empty, strategy)) == 0 for strategy in SPLIT_STRATEGIES)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"strategy": "leave_one_out"}, "split.strategy"),
        ({"val_share": -0.1}, "split.val_share"),
        ({"test_share": -0.01}, "split.test_share"),
        ({"val_share": 0.5, "test_share": 0.5}, "split.val_share + split.test_share"),
        ({"val_share": "0.1"}, "split.val_share"),
        ({"test_share": float("nan")}, "split.test_share"),
    ],
)
def test_bad_params_name_the_key(kwargs, key):
    with pytest.raises(SplitError) as err:
        assign_split(make_ratings({1: 5}), **kwargs)
    assert key in str(err.value)
    if "strategy" in kwargs:
        assert all(name in str(err.value) for name in SPLIT_STRATEGIES)


@pytest.mark.parametrize("strategy", ["temporal", "global_temporal"])
def test_temporal_needs_timestamps(strategy):
    with pytest.raises(SplitError, match="timestamp"):
        assign_split(make_ratings({1: 5}).drop(columns="timestamp"), strategy=strategy)


def test_drop_sparse_users():
    ratings = make_ratings(SIZES)
    kept, n_dropped = drop_sparse_users(ratings, 3)
    assert n_dropped == 2 + 1  # users 7 and 8
    assert set(kept["user_id"]) == set(SIZES) - {7, 8}
    assert kept.index.equals(ratings.index[~ratings["user_id"].isin([7, 8])])
    assert drop_sparse_users(ratings, 0)[1] == 0
    with pytest.raises(SplitError, match="split.min_ratings_per_user"):
        drop_sparse_users(ratings, -1)
    with pytest.raises(SplitError, match="split.min_ratings_per_user"):
        drop_sparse_users(ratings, 2.5)


def test_global_temporal_refuses_shares_no_cut_off_can_hold():
    # every user rates once at the start, then the last user rates 30 more: no cut-off leaves 99% held out
    ratings = pd.DataFrame({"user_id": [1, 2, 3] + [3] * 30, "movie_id": np.arange(33), "timestamp": np.arange(33)})
    with pytest.raises(SplitError, match="no global cut-off"):
        assign_split(ratings, "global_temporal", val_share=0.5, test_share=0.49, seed=0)
