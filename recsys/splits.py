"""Train/val/test splits of the ratings (DESIGN.md, "Protocols and metrics"): per-user random or temporal."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

SPLIT_STRATEGIES = ("random", "temporal")
SPLIT_NAMES = ("train", "val", "test")
_TRAIN, _VAL, _TEST = range(3)


class SplitError(ValueError):
    """Split parameters or ratings that cannot be split; the message names the split.* key and valid values."""


def assign_split(
    ratings: pd.DataFrame,
    strategy: str = "random",
    val_share: float = 0.1,
    test_share: float = 0.1,
    seed: int = 42,
) -> pd.Series:
    """Assign every rating to train, val or test, per user, so every user is seen in training.

    Splitting per user (rather than over all ratings) keeps each user's history in train and
    gives every evaluated user held-out items, which full-ranking retrieval metrics need.

    - random: each user's ratings are shuffled (seeded); round(test_share * n) go to test and
      round(val_share * n) to val (halves round up). A user with at least 3 ratings gets at least
      one in each split whose share is above 0; every user keeps at least one rating in train.
    - temporal: each user's latest rating (by timestamp, ties broken by movie_id) goes to test,
      the second latest to val, the rest to train; a user with 2 ratings has no val, with 1 only
      train. The shares are not used.

    Args:
        ratings: columns user_id and (for temporal) timestamp and movie_id; any row order and index.
        strategy: one of SPLIT_STRATEGIES.
        val_share: share of each user's ratings in val (random only).
        test_share: share of each user's ratings in test (random only).
        seed: seeds the random shuffle; the same seed and rows give the same split.

    Returns:
        A Categorical Series named "split" with categories ("train", "val", "test"), same index as ratings.

    Raises:
        SplitError: unknown strategy, shares that are negative or sum to 1 or more, or missing columns.
    """
    if strategy not in SPLIT_STRATEGIES:
        raise SplitError(f"split.strategy must be one of {SPLIT_STRATEGIES}, got {strategy!r}")
    _check_shares(val_share, test_share)
    needed = ["user_id"] if strategy == "random" else ["user_id", "timestamp", "movie_id"]
    missing = [name for name in needed if name not in ratings.columns]
    if missing:
        raise SplitError(f"ratings lack the columns {missing} that split.strategy {strategy!r} needs")

    users = ratings["user_id"].to_numpy()
    if strategy == "random":
        shuffle_key = np.random.default_rng(seed).permutation(len(ratings))
        order = np.lexsort((shuffle_key, users))
    else:
        # Latest first, so the rank within a user counts back from the most recent rating.
        order = np.lexsort(
            (-ratings["movie_id"].to_numpy(dtype="int64"), -ratings["timestamp"].to_numpy(dtype="int64"), users)
        )
    rank, size = _rank_within_user(users[order])

    if strategy == "random":
        n_test, n_val = _random_split_sizes(size, val_share, test_share)
    else:
        n_test = np.minimum(size - 1, 1)
        n_val = np.minimum(size - 1 - n_test, 1)

    codes_sorted = np.full(len(ratings), _TRAIN, dtype=np.int8)
    codes_sorted[rank < n_test + n_val] = _VAL
    codes_sorted[rank < n_test] = _TEST
    codes = np.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(SPLIT_NAMES)), index=ratings.index, name="split")


def drop_sparse_users(ratings: pd.DataFrame, min_ratings: int) -> tuple[pd.DataFrame, int]:
    """Remove users with fewer than `min_ratings` ratings, who cannot fill train, val and test.

    Args:
        ratings: a ratings table with a user_id column.
        min_ratings: the smallest number of ratings a kept user has (0 or 1 keeps everyone).

    Returns:
        (kept, n_rows_dropped): the ratings of the kept users (original order and index) and the
        number of rating rows removed.

    Raises:
        SplitError: min_ratings is not a non-negative integer, or ratings lack user_id.
    """
    if isinstance(min_ratings, bool) or not isinstance(min_ratings, numbers.Integral) or min_ratings < 0:
        raise SplitError(f"split.min_ratings_per_user must be an integer >= 0, got {min_ratings!r}")
    if "user_id" not in ratings.columns:
        raise SplitError(f"ratings lack the column user_id (it has {list(ratings.columns)})")
    per_user = ratings.groupby("user_id", sort=False)["user_id"].transform("size")
    keep = (per_user >= min_ratings).to_numpy()
    return ratings[keep], int((~keep).sum())


def _random_split_sizes(size: np.ndarray, val_share: float, test_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-rating test and val counts of its user, with the at-least-one rules of `assign_split`."""
    # floor(x + 0.5): halves round up, not to even as round() does, so 5 ratings x 0.1 -> 1.
    wanted_test = np.floor(test_share * size + 0.5).astype(np.int64)
    wanted_val = np.floor(val_share * size + 0.5).astype(np.int64)
    can_fill_all = size >= 3
    min_test = (can_fill_all & (test_share > 0)).astype(np.int64)
    min_val = (can_fill_all & (val_share > 0)).astype(np.int64)
    # Room is left for the val minimum and one train rating before test takes its share.
    n_test = np.clip(wanted_test, min_test, size - 1 - min_val)
    n_val = np.clip(wanted_val, min_val, size - 1 - n_test)
    return n_test, n_val


def _rank_within_user(sorted_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ratings sorted by user: each one's position within its user and its user's rating count."""
    n = len(sorted_users)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    lengths = np.diff(np.r_[starts, n])
    group_start = np.repeat(starts, lengths)
    return np.arange(n) - group_start, np.repeat(lengths, lengths)


def _check_shares(val_share: float, test_share: float) -> None:
    """Raise SplitError unless both shares are numbers >= 0 that sum to less than 1."""
    for key, value in (("split.val_share", val_share), ("split.test_share", test_share)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise SplitError(f"{key} must be a number in [0, 1), got {value!r}")
        if value < 0:
            raise SplitError(f"{key} must be >= 0 (a share of each user's ratings), got {value!r}")
    if val_share + test_share >= 1:
        raise SplitError(
            f"split.val_share + split.test_share must be < 1 to leave ratings for train, "
            f"got {val_share!r} + {test_share!r}"
        )
