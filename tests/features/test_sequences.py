"""Histories (recsys.features.sequences), training windows, fold-in splits: causal, vectorised, exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.foldin import foldin_split
from recsys.features.sequences import PAD, causal_histories, history_lengths, latest_histories
from recsys.models.configs import SequentialConfig
from recsys.models.sequential_model import training_windows
from recsys.runs.params import load_params


def random_timeline(seed: int = 0, n_users: int = 30, max_len: int = 40):
    """(users, positions, items) rows in a shuffled order: every user has positions 0..n-1."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_len, n_users)
    users = np.repeat(np.arange(1, n_users + 1) * 7, sizes)
    positions = np.concatenate([rng.permutation(n) for n in sizes])
    items = rng.permutation(len(users)) + 1  # distinct: a movie in a history names its interaction
    order = rng.permutation(len(users))
    return users[order], positions[order], items[order]


def slow_history(users, positions, items, user, position, length):
    mine = [(p, i) for u, p, i in zip(users, positions, items, strict=True) if u == user and p < position]
    latest = [i for _, i in sorted(mine)][-length:]
    return [PAD] * (length - len(latest)) + latest


@pytest.mark.parametrize("length", [1, 5, 50])
def test_causal_histories_match_a_per_row_loop_and_never_hold_the_row_or_later(length):
    users, positions, items = random_timeline()
    histories = causal_histories(users, positions, users, positions, items, length)
    assert histories.shape == (len(users), length)
    item_position = {(u, i): p for u, p, i in zip(users, positions, items, strict=True)}
    for row in range(len(users)):
        expected = slow_history(users, positions, items, users[row], positions[row], length)
        assert histories[row].tolist() == expected
        held = [i for i in histories[row] if i != PAD]
        # every movie in a history comes strictly before the interaction it is the history of
        assert all(item_position[(users[row], i)] < positions[row] for i in held)
    assert (history_lengths(histories) == np.minimum(positions, length)).all()


def test_histories_from_a_pool_take_only_the_pool_and_only_earlier_items():
    users, positions, items = random_timeline(1)
    in_pool = positions % 3 != 0  # e.g. the train ratings
    histories = causal_histories(users, positions, users[in_pool], positions[in_pool], items[in_pool], 8)
    for row in range(0, len(users), 7):
        expected = slow_history(users[in_pool], positions[in_pool], items[in_pool], users[row], positions[row], 8)
        assert histories[row].tolist() == expected


def test_latest_histories_are_the_users_last_items():
    users, positions, items = random_timeline(2)
    wanted = np.unique(users)[:5]
    latest = latest_histories(wanted, users, positions, items, 6)
    for row, user in enumerate(wanted):
        assert latest[row].tolist() == slow_history(users, positions, items, user, 10**9, 6)
    assert (latest_histories([123456], users, positions, items, 4) == PAD).all()  # no items: all padding


def test_bad_lengths_and_ids_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        causal_histories([1], [0], [1], [0], [5], 0)
    with pytest.raises(ValueError, match="non-negative|>= 0"):
        causal_histories([-1], [0], [1], [0], [5], 3)


def config(n: int, s: int) -> SequentialConfig:
    defaults = SequentialConfig.from_params(load_params()["sequential"])
    return dataclasses.replace(defaults, history_length=n, window_targets=s, target_horizon=1, embedding_dim=8)


@pytest.mark.parametrize(("n", "s"), [(3, 2), (5, 5), (2, 7)])
def test_training_windows_train_every_movie_but_the_first_once_from_earlier_movies_only(n, s):
    users, positions, items = random_timeline(3, n_users=12, max_len=25)
    items = np.arange(1, len(users) + 1)  # distinct, so a target names its interaction
    inputs = training_windows(users, positions, items, config(n, s))
    mask = inputs["loss_mask"]
    history, next_movie = inputs["window"][:, :-1], inputs["window"][:, 1:]
    targets = next_movie[mask]
    position_of = dict(zip(items, positions, strict=True))
    firsts = set(items[positions == 0])
    assert sorted(targets.tolist()) == sorted(set(items.tolist()) - firsts)  # each once, first ones never
    rows, slots = np.nonzero(mask)
    for row, slot in zip(rows, slots, strict=True):
        context = [i for i in history[row, : slot + 1] if i != PAD]
        target = next_movie[row, slot]
        assert context and all(position_of[i] < position_of[target] for i in context)
        assert history[row, slot] != PAD and len(context) >= min(n, position_of[target])
        later = list(inputs["window"][row, slot + 1 :])  # what a horizon > 1 may draw from
        assert all(position_of[i] > position_of[context[-1]] for i in later)


def test_a_window_cap_keeps_each_users_latest_targets():
    users, positions, items = random_timeline(4, n_users=12, max_len=25)
    items = np.arange(1, len(users) + 1)
    capped = training_windows(users, positions, items, dataclasses.replace(config(3, 2), max_windows_per_user=1))
    every = training_windows(users, positions, items, config(3, 2))
    counts = pd.Series(users).value_counts()
    assert len(capped["window"]) == int((counts > 1).sum())  # one window per user with a target
    targets = capped["window"][:, 1:][capped["loss_mask"]]
    position_of = dict(zip(items, positions, strict=True))
    user_of = dict(zip(items, users, strict=True))
    latest = {u: counts[u] - 1 for u in counts.index}
    # each user's targets are their last (up to 2) movies: the cap drops the earlier windows
    assert all(position_of[t] >= latest[user_of[t]] - 1 for t in targets.tolist())
    assert set(targets.tolist()) <= set(every["window"][:, 1:][every["loss_mask"]].tolist())


def test_foldin_split_gives_the_earliest_ratings_and_holds_out_the_rest():
    frame = pd.DataFrame(
        {
            "user_id": [5] * 6 + [9] * 3 + [2] * 7,
            "movie_id": [10, 11, 12, 13, 14, 15, 10, 11, 12, 20, 21, 22, 23, 24, 25, 26],
            "position": [5, 4, 3, 2, 1, 0, 0, 1, 2, 6, 5, 4, 3, 2, 1, 0],
        }
    ).sample(frac=1, random_state=0)
    catalogue = np.array([10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25, 26, 99])
    fold = foldin_split(frame, catalogue, 3)
    assert fold.user_ids.tolist() == [2, 5]  # user 9 has nothing after their first 3
    assert catalogue[fold.given_columns[1]].tolist() == [15, 14, 13]  # oldest first
    assert set(catalogue[fold.rest[1].indices]) == {10, 11, 12}
    assert catalogue[fold.histories(2)[0] - 1].tolist() == [25, 24]  # the latest 2 given, vocabulary index = col + 1
    assert fold.histories(5)[0, :2].tolist() == [PAD, PAD]
    perfect = fold.rest.toarray().astype(float)
    assert fold.evaluate(perfect, ks=(3,))["recall_at_3"] == pytest.approx(1.0)
    per_user = fold.per_user(perfect, ks=(3,))
    assert per_user.index.tolist() == [2, 5] and per_user["recall_at_3"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        foldin_split(frame, catalogue, 0)
