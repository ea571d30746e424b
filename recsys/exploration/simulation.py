"""A closed-loop simulation of the feedback loop: policies serve lists, simulated users accept from hidden preferences.

The world (DESIGN.md, "Closed-loop simulation"): a hidden preference model gives each (user,
movie) an acceptance probability (`HiddenPreferences`, calibrated on the run's held-out data by
`hidden_preferences`). Each policy lives in its own world: it starts from the train split and, every
round, serves k movies to each simulated user, who accepts each independently with the hidden
probability; the accepted movies join that policy's log and nothing else's, and the policy
updates its models from its log before the next round. A policy is handed its log (`PolicyLog`)
and a random generator, never the hidden model (`simulate` is the only holder of both).

Acceptance draws use common random numbers: a user facing a movie in round r makes the same
draw under every policy (a seeded hash of seed, round, user and movie), so differences between
policies are not draws of luck.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import optimize, special

from recsys.evaluation import metrics
from recsys.exploration.reranking import standardise_rows
from recsys.features.splits import tie_break_key
from recsys.models.ease import EASE

MEASURES = {  # what `simulate` measures each round: name -> what it is
    "accepted_per_user": "accepted per user",
    "cumulative_accepted_per_user": "cumulative accepted per user",
    "coverage": "catalogue coverage of the round",
    "gini": "Gini of the round's exposure",
    "shown_popularity": "mean popularity shown",
    "accepted_popularity": "mean popularity accepted",
    "never_shown": "share never shown so far",
}


class PolicyError(ValueError):
    """A policy served an invalid list: wrong shape, a movie outside the catalogue, repeated or already seen."""


# ---- hidden preferences ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class HiddenPreferences:
    """The simulation's ground truth: P(accept) = sigmoid(slope * z + offset) of every (user row, catalogue column).

    Attributes:
        z: (n_users, n_movies) the hidden model's scores, standardised per user.
        slope, offset: from `calibrate`.
    """

    z: np.ndarray
    slope: float
    offset: float

    def __repr__(self) -> str:  # never print 20M numbers into a report
        return f"HiddenPreferences({self.z.shape[0]:,} users x {self.z.shape[1]:,} movies, slope={self.slope:.3f}, offset={self.offset:.3f})"

    def probability(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Acceptance probabilities of the (rows[i], columns[i, j]) pairs: shape of `columns`."""
        return special.expit(self.z[np.asarray(rows)[:, None], columns] * self.slope + self.offset)


def calibrate(
    z: np.ndarray,
    reference: np.ndarray,
    reference_rate: float,
    background: np.ndarray,
    background_rate: float,
) -> tuple[float, float]:
    """(slope, offset) so that P = sigmoid(slope * z + offset) reproduces two measured rates.

    Args:
        z: (n_users, n_movies) standardised hidden scores.
        reference: (n_users, k) columns of lists whose acceptance rate was measured (the served lists).
        reference_rate: their mean acceptance (e.g. the share of served movies the user watched later).
        background: (n_users, m) columns of movies drawn at random among each user's unseen ones.
        background_rate: their mean acceptance (the share of a user's unseen movies watched later).

    For a slope, the offset that gives `reference_rate` is unique (the mean is increasing in it);
    the slope is then the one whose background rate matches: both by Brent's method.

    Raises:
        ValueError: a rate outside (0, 1), background_rate >= reference_rate, or no slope in
            [0.01, 20] matches (the two rates cannot come from these scores).
    """
    for name, rate in (("reference_rate", reference_rate), ("background_rate", background_rate)):
        if not 0 < rate < 1:
            raise ValueError(f"{name} must be in (0, 1), got {rate}")
    if background_rate >= reference_rate:
        raise ValueError(
            f"background_rate {background_rate:.4f} >= reference_rate {reference_rate:.4f}: the reference lists "
            "must be accepted more often than random movies for a preference model to separate them"
        )
    rows = np.arange(len(z))[:, None]
    ref, back = z[rows, reference].astype(np.float64), z[rows, background].astype(np.float64)

    def offset_for(slope: float) -> float:
        reach = slope * np.abs(ref).max() + 50  # beyond it every probability is 0 or 1
        return optimize.brentq(lambda c: special.expit(slope * ref + c).mean() - reference_rate, -reach, reach)

    def background_gap(slope: float) -> float:
        return special.expit(slope * back + offset_for(slope)).mean() - background_rate

    low, high = 0.01, 20.0
    if np.sign(background_gap(low)) == np.sign(background_gap(high)):
        raise ValueError(
            f"no slope in [{low}, {high}] gives background rate {background_rate:.4f} with reference rate "
            f"{reference_rate:.4f}: the hidden scores do not separate the reference lists from random movies"
        )
    slope = optimize.brentq(background_gap, low, high, xtol=1e-6)
    return float(slope), float(offset_for(slope))


# ---- what a policy sees -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLog:
    """One policy's log: the train interactions plus what its simulated users accepted, round by round.

    Attributes:
        user_ids, movie_ids: the rows (every user of the run) and columns (the catalogue).
        active: rows of the simulated users (served every round).
        base: the train interactions (user_id, movie_id, rating) the world starts from.
        accepted: accepted (user_id, movie_id, round) rows, in order.
        matrix: binary (n_users, n_movies) CSR of base + accepted: what each user has seen.
    """

    user_ids: np.ndarray
    movie_ids: np.ndarray
    active: np.ndarray
    base: pd.DataFrame
    accepted: pd.DataFrame
    matrix: sp.csr_matrix

    @classmethod
    def start(cls, train: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray, active: np.ndarray) -> PolicyLog:
        """The log of round 0: the train rows (user_id, movie_id, rating) over these users and catalogue."""
        user_ids, movie_ids = np.asarray(user_ids, np.int64), np.asarray(movie_ids, np.int64)
        rows = pd.Index(user_ids).get_indexer(train["user_id"])
        columns = pd.Index(movie_ids).get_indexer(train["movie_id"])
        if (rows < 0).any() or (columns < 0).any():
            raise ValueError("train interactions name users or movies outside the simulation's users and catalogue")
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=(len(user_ids), len(movie_ids)))
        matrix.data[:] = 1.0  # duplicates summed by the constructor stay binary
        _read_only(matrix)
        base = train[["user_id", "movie_id", "rating"]].reset_index(drop=True)
        accepted = pd.DataFrame({"user_id": np.empty(0, np.int64), "movie_id": np.empty(0, np.int64), "round": 0})
        return cls(user_ids, movie_ids, np.asarray(active, np.int64), base, accepted, matrix)

    def with_accepted(self, rows: np.ndarray, columns: np.ndarray, round_: int) -> PolicyLog:
        """A new log with the accepted (row, column) pairs of one round added."""
        added = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=self.matrix.shape)
        matrix = (self.matrix + added).tocsr()
        matrix.data[:] = 1.0
        _read_only(matrix)
        accepted = pd.concat(
            [
                self.accepted,
                pd.DataFrame({"user_id": self.user_ids[rows], "movie_id": self.movie_ids[columns], "round": round_}),
            ],
            ignore_index=True,
        )
        return PolicyLog(self.user_ids, self.movie_ids, self.active, self.base, accepted, matrix)

    def counts(self) -> np.ndarray:
        """Users per movie in the log (the policy's own popularity)."""
        return np.bincount(self.matrix.indices, minlength=len(self.movie_ids))

    def interactions(self) -> pd.DataFrame:
        """The log as an interactions table (split "train"; accepted movies have no rating) for a feature store."""
        accepted = self.accepted[["user_id", "movie_id"]].assign(rating=np.nan)
        table = pd.concat([self.base, accepted], ignore_index=True)
        return table.assign(split="train")


def _read_only(matrix: sp.csr_matrix) -> None:
    """Lock a log's arrays: every policy starts from the same log, so none may change it in place."""
    for array in (matrix.data, matrix.indices, matrix.indptr):
        array.flags.writeable = False


# ---- calibration on the run's data ------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Calibration:
    """What the hidden model was calibrated on (`hidden_preferences`).

    Attributes:
        reference_rate, background_rate: the two measured rates (`measured_rates`).
        background: (n_active, m) columns of random unseen movies per simulated user, where the
            background rate is matched.
    """

    reference_rate: float
    background_rate: float
    background: np.ndarray


def simulated_users(train: pd.DataFrame, user_ids: np.ndarray, n_users: int, seed: int) -> np.ndarray:
    """Rows (in `user_ids`) of the simulated users: those with train interactions, or a seeded sample of n_users (0: all)."""
    with_train = np.flatnonzero(np.isin(user_ids, train["user_id"].unique()))
    if n_users and n_users < len(with_train):
        return np.sort(np.random.default_rng(seed).choice(with_train, n_users, replace=False))
    return with_train


def random_unseen(log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n_active, k) catalogue columns drawn uniformly among each active user's unseen movies (not in the log)."""
    scores = rng.random((len(log.active), len(log.movie_ids)), dtype=np.float32)
    return metrics.top_k_from_scores(scores, k, exclude=log.matrix[log.active])


def measured_rates(everything: sp.csr_matrix, start: PolicyLog, reference: np.ndarray) -> tuple[float, float]:
    """(reference rate, background rate): how often the simulated users watched, after train, what they were offered.

    Args:
        everything: binary (n_users, n_movies) matrix of every interaction of the run (every split).
        start: the log of round 0 (train); its active rows are the simulated users.
        reference: (n_active, k) columns of lists built from train alone (the served list of round 0).

    Returns:
        The reference rate: the share of the reference lists' movies that are among the user's later
        (val + test) movies; the background rate: per user, later movies over unseen (non-train)
        movies, averaged over the users: the rate of a random unseen movie.
    """
    held_out = (everything - start.matrix).tocsr()[start.active]  # each simulated user's val + test movies
    reference_rate = float(held_out[np.arange(len(start.active))[:, None], reference].toarray().mean())
    unseen = len(start.movie_ids) - np.diff(start.matrix[start.active].indptr)
    background_rate = float((np.diff(held_out.indptr) / unseen).mean())
    return reference_rate, background_rate


def hidden_preferences(
    interactions: pd.DataFrame, start: PolicyLog, reference: np.ndarray, ease_l2: float, background_size: int, seed: int
) -> tuple[HiddenPreferences, Calibration]:
    """The simulation's world: EASE fitted on every interaction, standardised per user, calibrated on the run's data.

    Args:
        interactions: every interaction of the run (user_id, movie_id), every split.
        start: the log of round 0 (train); its active rows are the simulated users.
        reference: (n_active, k) columns the served policy lists from `start` (matched to the reference rate).
        ease_l2: EASE's penalty.
        background_size: random unseen movies drawn per user (matched to the background rate).
        seed: seeds that draw.

    Returns:
        (the hidden preferences of every user of `start`, what they were calibrated on).
    """
    ids = (start.user_ids, start.movie_ids, start.active)
    everything = PolicyLog.start(interactions.assign(rating=np.nan), *ids).matrix
    z = standardise_rows(np.asarray(EASE(ease_l2).fit(everything).score(everything), np.float32))
    reference_rate, background_rate = measured_rates(everything, start, reference)
    background = random_unseen(start, background_size, np.random.default_rng(seed))
    slope, offset = calibrate(z[start.active], reference, reference_rate, background, background_rate)
    return HiddenPreferences(z, slope, offset), Calibration(reference_rate, background_rate, background)


class Policy(Protocol):
    """What `simulate` asks of a policy: lists for the log's active users, and an update from its log."""

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(log.active), k) catalogue columns, best first; none already in the user's log."""
        ...

    def update(self, log: PolicyLog) -> None:
        """Refit or refresh what the policy learns from its log (called before round 0 and after every round)."""
        ...


# ---- the rounds --------------------------------------------------------------------------------------


def acceptance_draws(seed: int, round_: int, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) draws fixed by (seed, round, user, movie): the same under every policy."""
    round_seed = int(np.random.SeedSequence([seed, round_]).generate_state(1, np.uint64)[0])
    keys = tie_break_key(np.broadcast_to(user_ids, movie_ids.shape), movie_ids, round_seed)
    return (keys >> np.uint64(11)).astype(np.float64) / 2.0**53


def _check_lists(shown: np.ndarray, log: PolicyLog, k: int, name: str) -> np.ndarray:
    shown = np.asarray(shown)
    if shown.shape != (len(log.active), k) or shown.dtype.kind not in "iu":
        raise PolicyError(
            f"policy {name!r} returned {shown.shape} {shown.dtype}, expected ({len(log.active)}, {k}) ints"
        )
    if shown.size and (shown.min() < 0 or shown.max() >= len(log.movie_ids)):
        raise PolicyError(f"policy {name!r} returned a column outside the catalogue (0..{len(log.movie_ids) - 1})")
    ordered = np.sort(shown, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise PolicyError(f"policy {name!r} showed a movie twice in one list")
    if log.matrix[log.active[:, None], shown].count_nonzero():
        raise PolicyError(f"policy {name!r} showed a movie the user has already seen (it is in the policy's log)")
    return shown.astype(np.int64)


def simulate(
    policies: Mapping[str, Policy],
    hidden: HiddenPreferences,
    start: PolicyLog,
    rounds: int,
    k: int,
    seed: int,
    popularity: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, PolicyLog]]:
    """Run every policy for `rounds` rounds in its own world; measure each round.

    Args:
        policies: name -> policy (each starts from `start`, whose matrix is read-only, and gets a
            generator seeded by (seed, its position, round)).
        hidden: the acceptance model; only this function reads it.
        start: the log of round 0 (train).
        rounds, k: rounds and list length.
        seed: the simulation's seed (acceptance draws and the policies' generators).
        popularity: (n_movies,) a fixed popularity per movie (share of train users) for the measures.

    Returns:
        (one row per policy and round with MEASURES, `policy_s` (recommend + update) and `round`,
        each policy's final log).
    """
    rows_out, logs = [], {}
    active_users = start.user_ids[start.active]
    for index, (name, policy) in enumerate(policies.items()):
        log, exposure, cumulative = start, np.zeros(len(start.movie_ids), np.int64), 0.0
        started = time.perf_counter()
        policy.update(log)
        policy_s = time.perf_counter() - started
        for round_ in range(rounds):
            started = time.perf_counter()
            shown = _check_lists(policy.recommend(log, k, np.random.default_rng([seed, index, round_])), log, k, name)
            policy_s += time.perf_counter() - started
            draws = acceptance_draws(seed, round_, active_users[:, None], start.movie_ids[shown])
            accepted = draws < hidden.probability(start.active, shown)
            shown_counts = np.bincount(shown.ravel(), minlength=len(exposure))
            exposure += shown_counts
            cumulative += accepted.sum() / len(shown)
            log = log.with_accepted(np.repeat(start.active, accepted.sum(axis=1)), shown[accepted], round_ + 1)
            started = time.perf_counter()
            policy.update(log)
            policy_s += time.perf_counter() - started
            taken = shown[accepted]
            rows_out.append(
                {
                    "policy": name,
                    "round": round_ + 1,
                    "accepted_per_user": float(accepted.sum() / len(shown)),
                    "cumulative_accepted_per_user": float(cumulative),
                    "coverage": metrics.coverage_at_k(shown, len(exposure), k),
                    "gini": metrics.gini_index(shown, len(exposure), k),
                    "shown_popularity": float(popularity[shown].mean()),
                    "accepted_popularity": float(popularity[taken].mean()) if taken.size else float("nan"),
                    "never_shown": float((exposure == 0).mean()),
                    "policy_s": policy_s,
                }
            )
            policy_s = 0.0
        logs[name] = log
    return pd.DataFrame(rows_out), logs


def _accepted_weighted_popularity(rounds: pd.DataFrame) -> float:
    """Mean popularity of every accepted movie over the rounds (rounds weighted by what was accepted in them)."""
    taken = rounds["accepted_per_user"].to_numpy()
    values = rounds["accepted_popularity"].to_numpy()
    keep = taken > 0
    return float(np.average(values[keep], weights=taken[keep])) if keep.any() else float("nan")


def summary(per_round: pd.DataFrame) -> pd.DataFrame:
    """One row per policy: accepted per user (mean over rounds), the last round's coverage, Gini and never-shown
    share, the mean popularity of what was shown (over rounds) and of every accepted movie, the policy's seconds."""
    by_policy = per_round.groupby("policy", sort=False)
    last = by_policy.last()
    return pd.DataFrame(
        {
            "accepted_per_user": by_policy["accepted_per_user"].mean(),
            "cumulative_accepted_per_user": last["cumulative_accepted_per_user"],
            "coverage_final": last["coverage"],
            "gini_final": last["gini"],
            "never_shown_final": last["never_shown"],
            "shown_popularity": by_policy["shown_popularity"].mean(),
            "accepted_popularity": by_policy.apply(_accepted_weighted_popularity, include_groups=False),
            "policy_s": by_policy["policy_s"].sum(),
        }
    )


def summary_over_seeds(per_round: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(`summary` of `seed`'s rounds, the spread between the seeds: per policy and column, max minus min over seeds)."""
    finals = {s: summary(part) for s, part in per_round.groupby("seed")}
    final = finals[seed]
    spread = pd.concat(finals.values()).groupby(level=0, sort=False).agg(lambda v: v.max() - v.min())
    return final, spread.loc[final.index]


def compare(
    final: pd.DataFrame, spread: pd.DataFrame, policy: str, measure: str, reference: str = "served"
) -> tuple[float, str, float]:
    """`policy` against `reference` on one measure of `summary_over_seeds`, with the tie rule.

    Returns:
        (difference, verdict, band): the policy's value minus the reference's; the band is twice
        the larger of the two policies' spreads between seeds; the verdict is "a tie" when the
        difference is within the band, else "higher" or "lower".
    """
    difference = float(final.loc[policy, measure] - final.loc[reference, measure])
    band = float(2 * max(spread.loc[policy, measure], spread.loc[reference, measure]))
    verdict = "a tie" if abs(difference) <= band else ("higher" if difference > 0 else "lower")
    return difference, verdict, band


SUMMARY_METRICS = (
    "accepted_per_user",
    "cumulative_accepted_per_user",
    "coverage_final",
    "gini_final",
    "never_shown_final",
    "accepted_popularity",
)


def summary_metrics(final: pd.DataFrame, spread: pd.DataFrame) -> dict[str, float]:
    """`<measure>_<policy>` of each of SUMMARY_METRICS, and `<measure>_spread_<policy>` of accepted per user and coverage."""
    out = {}
    for policy, row in final.iterrows():
        out.update({f"{measure}_{policy}": row[measure] for measure in SUMMARY_METRICS})
        out.update({f"{m}_spread_{policy}": spread.loc[policy, m] for m in ("accepted_per_user", "coverage_final")})
    return out
