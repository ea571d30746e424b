"""Train/val/test splits of the ratings (DESIGN.md, "Protocols and metrics") and each user's timeline.

Strategies: `random` (per user, seeded shares), `temporal` (per user by time: the latest shares
to test and val), `leave_last_out` (per user: the last rating to test, the one before to val) and
`global_temporal` (two cut-off times for everyone: val and test are the ratings after them).
Time order is `timeline_position`: by timestamp, ties broken by a seeded hash of (user, movie),
so the order never depends on the rows' order in a file.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

SPLIT_STRATEGIES = ("random", "temporal", "leave_last_out", "global_temporal")
SPLIT_NAMES = ("train", "val", "test")
_TRAIN, _VAL, _TEST = range(3)
_UNSCORED = -1  # no label (missing): a rating that is neither trained on nor evaluated (global_temporal)


class SplitError(ValueError):
    """Split parameters or ratings that cannot be split; the message names the split.* key and valid values."""


def tie_break_key(user_ids: np.ndarray, movie_ids: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per (user, movie), fixed by `seed`: the order of ratings with the same timestamp.

    MovieLens stores seconds, and about half of a user's consecutive ML-1M ratings share one (a
    page of ratings submitted at once), so their true order is unknown. A hash (splitmix64's
    finaliser) of (seed, user, movie) orders them: pseudo-random, so it favours no movie id, and
    a property of the rating, so shuffling the file's rows changes nothing.
    """
    with np.errstate(over="ignore"):
        key = (np.asarray(user_ids, np.uint64) << np.uint64(32)) ^ np.asarray(movie_ids, np.uint64)
        key = key ^ np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return key ^ (key >> np.uint64(31))


def timeline_position(ratings: pd.DataFrame, seed: int) -> pd.Series:
    """Each rating's place in its user's timeline: 0 for the earliest, by timestamp then `tie_break_key`.

    Args:
        ratings: columns user_id, movie_id, timestamp; any row order and index.
        seed: fixes the order of ratings with the same timestamp.

    Returns:
        An int32 Series named "position", same index as ratings.
    """
    missing = [name for name in ("user_id", "movie_id", "timestamp") if name not in ratings.columns]
    if missing:
        raise SplitError(f"ratings lack the columns {missing} that a timeline needs")
    users = ratings["user_id"].to_numpy()
    order = np.lexsort(
        (
            tie_break_key(users, ratings["movie_id"].to_numpy(), seed),
            ratings["timestamp"].to_numpy(dtype="int64"),
            users,
        )
    )
    rank, _ = _rank_within_user(users[order])
    position = np.empty(len(ratings), np.int32)
    position[order] = rank
    return pd.Series(position, index=ratings.index, name="position")


def assign_split(
    ratings: pd.DataFrame,
    strategy: str = "random",
    val_share: float = 0.1,
    test_share: float = 0.1,
    seed: int = 42,
) -> pd.Series:
    """Assign every rating to train, val or test: per user (every user is seen in training) or by global cut-offs.

    Splitting per user (rather than over all ratings) keeps each user's history in train and
    gives every evaluated user held-out items, which full-ranking retrieval metrics need; but
    train then holds other users' ratings from after a user's test period, which `global_temporal`
    avoids.

    - random: each user's ratings are shuffled (seeded); round(test_share * n) go to test and
      round(val_share * n) to val (halves round up). A user with at least 3 ratings gets at least
      one in each split whose share is above 0; every user keeps at least one rating in train.
    - temporal: the same counts, taken from the end of each user's timeline (`timeline_position`):
      the latest round(test_share * n) ratings to test, the round(val_share * n) before them to
      val, the rest to train. Every test rating of a user comes after every val rating, and every
      val rating after every train rating (by timestamp; equal timestamps by the seeded tie rule).
    - leave_last_out: each user's last rating (timeline order) to test, the one before to val, the
      rest to train; a user with 2 ratings has no val, with 1 only train. The shares are not used.
    - global_temporal: all ratings in one time order (by timestamp, equal timestamps by the same
      seeded tie rule, so it agrees with every user's timeline), cut twice: every rating before
      the first cut-off is train, the ratings after it val, those after the second test. The cut-offs
      are the same for everyone, so every val and test rating comes after every train rating (of any
      user), and every test rating after every val rating. A user with no train rating (all their
      ratings after the first cut-off) cannot be scored: their ratings get no label (missing),
      neither trained on nor evaluated; the caller drops and counts them. The first cut-off is
      the latest one where val + test hold at least val_share + test_share of the labelled ratings (those of
      users with a train rating), the second so that test holds test_share of them (`_global_codes`).
      Users whose ratings all precede the first cut-off have train ratings only.

    Args:
        ratings: columns user_id and (all but random) timestamp and movie_id; any row order and index.
        strategy: one of SPLIT_STRATEGIES.
        val_share: share of each user's ratings in val (random, temporal); of the labelled ratings (global_temporal).
        test_share: share of each user's ratings in test (random, temporal); of the labelled ratings (global_temporal).
        seed: seeds the random shuffle and the tie rule; the same seed and ratings give the same split.

    Returns:
        A Categorical Series named "split" with categories ("train", "val", "test"), same index as
        ratings; missing only for global_temporal's unscored ratings.

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

    if strategy == "global_temporal":
        return _labels(_global_codes(ratings, val_share, test_share, seed), ratings.index)
    users = ratings["user_id"].to_numpy()
    if strategy == "random":
        shuffle_key = np.random.default_rng(seed).permutation(len(ratings))
        order = np.lexsort((shuffle_key, users))
    else:
        # Latest first, so the rank within a user counts back from the most recent rating.
        order = np.lexsort((-timeline_position(ratings, seed).to_numpy(np.int64), users))
    rank, size = _rank_within_user(users[order])

    if strategy == "leave_last_out":
        n_test = np.minimum(size - 1, 1)
        n_val = np.minimum(size - 1 - n_test, 1)
    else:
        n_test, n_val = _split_sizes(size, val_share, test_share)

    codes_sorted = np.full(len(ratings), _TRAIN, dtype=np.int8)
    codes_sorted[rank < n_test + n_val] = _VAL
    codes_sorted[rank < n_test] = _TEST
    codes = np.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return _labels(codes, ratings.index)


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


def foldin_users(user_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded sample of users kept out of every model's training: the fold-in users (DESIGN.md, "Fold-in").

    Args:
        user_ids: the users to draw from (repeats allowed; the order does not matter).
        share: round(share * distinct users) are drawn (halves round up); 0 draws none.
        seed: the run's seed; the draw depends only on it and the set of users.

    Returns:
        The drawn user ids, sorted.
    """
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
        raise SplitError(f"split.foldin_share must be a number in [0, 1), got {share!r}")
    distinct = np.unique(np.asarray(user_ids, np.int64))
    n = int(np.floor(share * len(distinct) + 0.5))
    rng = np.random.default_rng([int(seed), 0xF01D])  # a stream of its own, apart from the split's shuffle
    return np.sort(rng.choice(distinct, size=n, replace=False))


def new_movies(movie_ids: np.ndarray, share: float, min_ratings: int, seed: int) -> np.ndarray:
    """A seeded sample of well-rated movies held out as *new*: no model learns from any of their ratings.

    Args:
        movie_ids: the movie of each rating (the order does not matter).
        share: round(share * eligible movies) are drawn (halves round up); 0 draws none.
        min_ratings: a movie is eligible with at least this many ratings (enough to score it on).
        seed: the run's seed; the draw depends only on it and the eligible movies.

    Returns:
        The drawn movie ids, sorted.
    """
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
        raise SplitError(f"split.new_movie_share must be a number in [0, 1), got {share!r}")
    if isinstance(min_ratings, bool) or not isinstance(min_ratings, numbers.Integral) or min_ratings < 1:
        raise SplitError(f"split.new_movie_min_ratings must be an integer >= 1, got {min_ratings!r}")
    movies, counts = np.unique(np.asarray(movie_ids, np.int64), return_counts=True)
    eligible = movies[counts >= min_ratings]
    n = int(np.floor(share * len(eligible) + 0.5))
    rng = np.random.default_rng([int(seed), 0x4E3])  # a stream of its own, apart from the fold-in draw
    return np.sort(rng.choice(eligible, size=n, replace=False))


def held_out_for_sample(
    split: pd.Series,
    user_ids: pd.Series,
    n_users: int,
    seed: int,
    excluded: np.ndarray | None = None,
    strategy: str = "random",
) -> pd.Series:
    """The split labels with val and test kept for a seeded sample of `n_users` users only.

    Every metric averages over users, and a full ranking of the catalogue costs each user scored:
    at ML-25M's size (146k users x 62k movies) that is minutes per model and evaluation. With a
    sample, the other users' ratings all go to train (the models learn from them; nothing of
    theirs is scored), and every metric of the run is over the sample's held-out ratings.
    Under global_temporal, train must hold no rating after the cut-offs: the sample is drawn from
    the users with a val or test rating (many have train ratings only), and the other users'
    val and test ratings get no label (missing; the caller drops them) instead of train.

    Args:
        split: each rating's label from `assign_split`.
        user_ids: each rating's user, aligned with `split`.
        n_users: users who keep their val and test ratings; 0 (or at least the number of users) keeps all.
        seed: the run's seed; the draw depends only on it and the set of users.
        excluded: users never drawn (the fold-in users, who leave the interactions anyway).
        strategy: the split's strategy (`assign_split`); only global_temporal changes the above.

    Returns:
        The labels (same type and index), "train" for every rating of a user outside the sample
        (global_temporal: missing for their val and test ratings).
    """
    user_ids = np.asarray(user_ids)
    is_global = strategy == "global_temporal"
    scorable = split.isin(["val", "test"]).to_numpy() if is_global else slice(None)
    distinct = np.unique(user_ids[scorable].astype(np.int64))
    if n_users < 0:
        raise SplitError(f"split.eval_users must be >= 0 (0: every user), got {n_users}")
    if excluded is not None:
        distinct = np.setdiff1d(distinct, np.asarray(excluded, np.int64))
    if n_users == 0 or n_users >= len(distinct):
        return split
    rng = np.random.default_rng([int(seed), 0xE7A1])  # a stream of its own, apart from the split and fold-in draws
    sampled = rng.choice(distinct, size=n_users, replace=False)
    in_sample = np.isin(user_ids, sampled)
    if is_global:
        return split.where(in_sample | (split == "train").to_numpy())
    return split.where(in_sample, "train")


def _global_codes(ratings: pd.DataFrame, val_share: float, test_share: float, seed: int) -> np.ndarray:
    """Split codes of `global_temporal` (`assign_split`): two cut-offs in the time order of all ratings.

    Only users with a rating before the first cut-off can be scored, and in MovieLens many users
    rate in a single burst, so cutting the latest shares of *all* ratings would leave far smaller
    shares among the users who stay (the ones with a train rating). The first cut-off is instead
    the latest position whose held-out share among the kept users' ratings is at least val_share +
    test_share (the latest such position: the most users in train; the share moves in tiny steps at
    scale); the second splits those held-out ratings so test gets its share of them (the latest
    ones). So val and test hold about val_share and test_share of the labelled ratings.
    """
    users = ratings["user_id"].to_numpy()
    # By timestamp, then the tie rule; (user, movie) pairs are unique, so the order is total.
    order = np.lexsort(
        (tie_break_key(users, ratings["movie_id"].to_numpy(), seed), ratings["timestamp"].to_numpy(dtype="int64"))
    )
    n, held = len(ratings), val_share + test_share
    codes_sorted = np.full(n, _TRAIN, dtype=np.int8)
    if n > 1 and held > 0:
        _, user_codes, counts = np.unique(users[order], return_inverse=True, return_counts=True)
        first = np.full(len(counts), n, dtype=np.int64)
        np.minimum.at(first, user_codes, np.arange(n))  # each user's first position in time
        # kept[a]: ratings of the users whose first rating is before position a (train is positions < a)
        kept = np.concatenate([[0.0], np.cumsum(np.bincount(first, weights=counts, minlength=n))])
        cut = np.arange(1, n)  # one rating at least in train, at least one after the cut
        share = (kept[cut] - cut) / kept[cut]  # of the kept users' ratings, the share after the cut
        reaching = np.flatnonzero(share >= held)  # the latest such cut-off keeps the most users in train
        if not len(reaching):
            raise SplitError(
                f"no global cut-off leaves split.val_share + split.test_share = {held:g} of the scored users' "
                f"ratings after it (at most {share.max():.3f}): lower the shares"
            )
        a = int(cut[reaching[-1]])
        is_kept = first[user_codes] < a
        after = np.flatnonzero(is_kept & (np.arange(n) >= a))  # the kept users' ratings after the first cut-off
        n_test = min(int(np.floor(test_share / held * len(after) + 0.5)), len(after))
        codes_sorted[after] = _VAL
        codes_sorted[after[len(after) - n_test :]] = _TEST
        codes_sorted[~is_kept] = _UNSCORED
    codes = np.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return codes


def _labels(codes: np.ndarray, index: pd.Index) -> pd.Series:
    """The split column from codes (_TRAIN, _VAL, _TEST; _UNSCORED becomes missing)."""
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(SPLIT_NAMES)), index=index, name="split")


def _split_sizes(size: np.ndarray, val_share: float, test_share: float) -> tuple[np.ndarray, np.ndarray]:
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
