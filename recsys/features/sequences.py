"""Each interaction's history: the user's movies strictly before it in time, the most recent few, vectorised.

A history is a row of a fixed-width integer matrix, oldest movie first and the latest last,
left-padded with PAD. Positions are `splits.timeline_position` (timestamp, then the seeded tie
rule), so "before" means before in the one timeline every split and model shares.
"""

from __future__ import annotations

import numpy as np

PAD = 0  # fills the slots of a history shorter than its width (0 is also an encoder's unknown id)
_LATEST = np.iinfo(np.int32).max  # a position after every rating: the user's whole pool is their history


def _keys(users: np.ndarray, positions: np.ndarray) -> np.ndarray:
    users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
    if len(users) and (users.min() < 0 or users.max() >= 2**31 or positions.min() < 0):
        raise ValueError("user ids must be in [0, 2**31) and positions >= 0")
    return (users << 32) | positions


class Timeline:
    """A pool of interactions sorted once by (user, position), so any history is two binary searches away.

    Args:
        users, positions: each pool interaction's user and timeline position.
        items: the value each contributes to a history (a movie id, or an encoded index where PAD
            means nothing).
    """

    def __init__(self, users: np.ndarray, positions: np.ndarray, items: np.ndarray):
        keys = _keys(users, positions)
        order = np.argsort(keys, kind="stable")
        self.keys, self.items = keys[order], np.asarray(items)[order]
        self.users = np.unique(self.keys >> 32)  # the users with at least one item, sorted

    def extended(self, users: np.ndarray, positions: np.ndarray, items: np.ndarray) -> Timeline:
        """This pool with more interactions (re-sorted)."""
        return Timeline(
            np.r_[self.keys >> 32, np.asarray(users, np.int64)],
            np.r_[self.keys & 0xFFFFFFFF, np.asarray(positions, np.int64)],
            np.r_[self.items, np.asarray(items, self.items.dtype)],
        )

    def last_position(self, user_id: int) -> int:
        """The user's latest position in the pool (-1 without any)."""
        end = np.searchsorted(self.keys, (np.int64(user_id) << 32) | 0xFFFFFFFF, "right")
        return int(self.keys[end - 1] & 0xFFFFFFFF) if end and self.keys[end - 1] >> 32 == user_id else -1

    def before(self, target_users: np.ndarray, target_positions: np.ndarray, length: int) -> np.ndarray:
        """For each target (user, position): the latest `length` pool items of that user strictly before it.

        Returns:
            (len(targets), length) array of the items' dtype, oldest first, left-padded with PAD.
        """
        if length < 1:
            raise ValueError(f"a history holds at least 1 item, got length={length}")
        target_users = np.asarray(target_users, np.int64)
        end = np.searchsorted(self.keys, _keys(target_users, target_positions), "left")  # first item not before
        start = np.searchsorted(self.keys, target_users << 32, "left")  # the user's first item
        slots = end[:, None] - length + np.arange(length)[None, :]
        filled = slots >= start[:, None]
        out = np.full((len(target_users), length), PAD, dtype=self.items.dtype)
        out[filled] = self.items[slots[filled]]
        return out

    def latest(self, user_ids: np.ndarray, length: int) -> np.ndarray:
        """Each user's latest `length` pool items (their history as of now), laid out as `before` does."""
        user_ids = np.asarray(user_ids, np.int64)
        return self.before(user_ids, np.full(len(user_ids), _LATEST), length)


def causal_histories(
    target_users: np.ndarray,
    target_positions: np.ndarray,
    pool_users: np.ndarray,
    pool_positions: np.ndarray,
    pool_items: np.ndarray,
    length: int,
) -> np.ndarray:
    """For each target (user, position): the latest `length` pool items of that user strictly before it.

    The pool is what a history may contain (e.g. the train ratings: a model never sees val or
    test movies as inputs while it learns); a target need not be in the pool. One sort and two
    binary searches (`Timeline`), no per-row Python.

    Args:
        target_users, target_positions: the interactions that need a history.
        pool_users, pool_positions, pool_items: the interactions histories are drawn from, and
            the value each contributes (a movie id, or an encoded index where PAD means nothing).
        length: the width N of a history: the most recent N items are kept.

    Returns:
        (len(targets), length) array of pool_items' dtype, oldest first, left-padded with PAD.
    """
    return Timeline(pool_users, pool_positions, pool_items).before(target_users, target_positions, length)


def latest_histories(
    user_ids: np.ndarray, pool_users: np.ndarray, pool_positions: np.ndarray, pool_items: np.ndarray, length: int
) -> np.ndarray:
    """Each user's latest `length` pool items (their history as of now), as `causal_histories` lays them out."""
    return Timeline(pool_users, pool_positions, pool_items).latest(user_ids, length)


def pad_left(rows: np.ndarray, length: int) -> np.ndarray:
    """(n, m) item rows, oldest first -> (n, length): the latest `length` of each, left-padded with PAD."""
    rows = np.atleast_2d(np.asarray(rows))
    if length < 1:
        raise ValueError(f"a history holds at least 1 item, got length={length}")
    latest = rows[:, max(rows.shape[1] - length, 0) :]
    out = np.full((len(rows), length), PAD, dtype=rows.dtype)
    out[:, length - latest.shape[1] :] = latest
    return out


def history_lengths(histories: np.ndarray) -> np.ndarray:
    """How many real (non-PAD) items each history row holds."""
    return (np.asarray(histories) != PAD).sum(axis=1)
