"""A closed-loop simulation of the feedback loop: policies serve lists, simulated users accept from hidden preferences.

The world (DESIGN.md, "Closed-loop simulation"): a hidden preference model gives each (user,
movie) an acceptance probability (`hidden_preferences.HiddenPreferences`, calibrated on the test
split). Each policy lives in its own world: it starts from what the served system knows (train +
val) and, every round, serves k movies to each simulated user, who accepts each independently with the hidden
probability; the accepted movies join that policy's log and nothing else's, and the policy
updates its models from its log before the next round. A policy is handed its log (`PolicyLog`)
and a random generator, never the hidden model (`simulate` is the only holder of both).

Acceptance draws use common random numbers: a user facing a movie in round r makes the same
draw under every policy (a seeded hash of seed, round, user and movie), so differences between
policies are not draws of luck.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.features.splits import tie_break_key

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


class AcceptanceModel(Protocol):
    """What `simulate` asks of a world: the acceptance probability of (user row, catalogue column) pairs."""

    def probability(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Probabilities of the (rows[i], columns[i, j]) pairs: shape of `columns`."""
        ...


# ---- what a policy sees -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLog:
    """One policy's log: the interactions it starts from plus what its simulated users accepted, round by round.

    Attributes:
        user_ids, movie_ids: the rows (every user of the run) and columns (the catalogue).
        active: rows of the simulated users (served every round).
        base: the interactions (user_id, movie_id, rating and, when given, position) the world starts from.
        accepted: accepted (user_id, movie_id, round) rows, in order.
        matrix: binary (n_users, n_movies) CSR of base + accepted: what each user has seen.
        start_matrix: the matrix of round 0 (every later matrix grows from it).
    """

    user_ids: np.ndarray
    movie_ids: np.ndarray
    active: np.ndarray
    base: pd.DataFrame
    accepted: pd.DataFrame
    matrix: sp.csr_matrix
    start_matrix: sp.csr_matrix | None = None

    @classmethod
    def start(cls, train: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray, active: np.ndarray) -> PolicyLog:
        """The log of round 0: the rows (user_id, movie_id, rating; position if present: each user's timeline,
        which a history-reading retriever needs) over these users and catalogue."""
        user_ids, movie_ids = np.asarray(user_ids, np.int64), np.asarray(movie_ids, np.int64)
        rows = pd.Index(user_ids).get_indexer(train["user_id"])
        columns = pd.Index(movie_ids).get_indexer(train["movie_id"])
        if (rows < 0).any() or (columns < 0).any():
            raise ValueError("start interactions name users or movies outside the simulation's users and catalogue")
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=(len(user_ids), len(movie_ids)))
        matrix.data[:] = 1.0  # duplicates summed by the constructor stay binary
        _read_only(matrix)
        base = train[[c for c in ("user_id", "movie_id", "rating", "position") if c in train]].reset_index(drop=True)
        accepted = pd.DataFrame({"user_id": np.empty(0, np.int64), "movie_id": np.empty(0, np.int64), "round": 0})
        return cls(user_ids, movie_ids, np.asarray(active, np.int64), base, accepted, matrix, matrix)

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
        return PolicyLog(self.user_ids, self.movie_ids, self.active, self.base, accepted, matrix, self.start_matrix)

    def counts(self) -> np.ndarray:
        """Users per movie in the log (the policy's own popularity)."""
        return np.bincount(self.matrix.indices, minlength=len(self.movie_ids))

    def interactions(self) -> pd.DataFrame:
        """The log as an interactions table (split "train"; accepted movies have no rating) for a feature store."""
        accepted = self.accepted[["user_id", "movie_id"]].assign(rating=np.nan)
        table = pd.concat([self.base.drop(columns="position", errors="ignore"), accepted], ignore_index=True)
        return table.assign(split="train")

    def timeline(self) -> pd.DataFrame:
        """(user_id, movie_id, position, rating): the start's timeline, then the accepted movies in the order
        accepted (no rating)."""
        if "position" not in self.base.columns:
            raise ValueError("the start log has no `position` column: start it from interactions with their timeline")
        after = int(self.base["position"].max()) + 1 if len(self.base) else 0
        accepted = self.accepted[["user_id", "movie_id"]].assign(
            position=after + np.arange(len(self.accepted)), rating=np.nan
        )
        return pd.concat([self.base[["user_id", "movie_id", "position", "rating"]], accepted], ignore_index=True)


def _read_only(matrix: sp.csr_matrix) -> None:
    """Lock a log's arrays: every policy starts from the same log, so none may change it in place."""
    for array in (matrix.data, matrix.indices, matrix.indptr):
        array.flags.writeable = False


# ---- the simulated users -----------------------------------------------------------------------------


def simulated_users(train: pd.DataFrame, user_ids: np.ndarray, n_users: int, seed: int) -> np.ndarray:
    """Rows (in `user_ids`) of the simulated users: those with start interactions (`train`: e.g. train + val), or a
    seeded sample of n_users of them (0: all)."""
    with_train = np.flatnonzero(np.isin(user_ids, train["user_id"].unique()))
    if n_users and n_users < len(with_train):
        return np.sort(np.random.default_rng(seed).choice(with_train, n_users, replace=False))
    return with_train


def random_unseen(log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n_active, k) catalogue columns drawn uniformly among each active user's unseen movies (not in the log)."""
    scores = rng.random((len(log.active), len(log.movie_ids)), dtype=np.float32)
    return metrics.top_k_from_scores(scores, k, exclude=log.matrix[log.active])


class Policy(Protocol):
    """What `simulate` asks of a policy: lists for the log's active users, and an update from its log."""

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(log.active), k) catalogue columns, best first; none already in the user's log."""
        ...

    def update(self, log: PolicyLog) -> None:
        """Refit or refresh what the policy learns from its log (called before round 0 and after every round)."""
        ...


class PopularityPolicy:
    """The k movies most users in the log have seen, the user's own excluded."""

    def __init__(self):
        self._counts: np.ndarray | None = None

    def update(self, log: PolicyLog) -> None:
        self._counts = log.counts().astype(np.float32)

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        scores = np.broadcast_to(self._counts, (len(log.active), len(self._counts)))
        return metrics.top_k_from_scores(scores, k, exclude=log.matrix[log.active])


class RandomPolicy:
    """k movies drawn uniformly among the user's unseen ones."""

    def update(self, log: PolicyLog) -> None:
        pass

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        return random_unseen(log, k, rng)


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
    hidden: AcceptanceModel,
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
        start: the log of round 0 (e.g. train + val: what the served system knows).
        rounds, k: rounds and list length.
        seed: the simulation's seed (acceptance draws and the policies' generators).
        popularity: (n_movies,) a fixed popularity per movie (e.g. the share of simulated users who saw it at
            the start) for the measures.

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


def simulate_worlds(
    make_policies: Callable[[], Mapping[str, Policy]],
    worlds: Mapping[str, AcceptanceModel],
    start: PolicyLog,
    rounds: int,
    k: int,
    seeds: Sequence[int],
    popularity: np.ndarray,
    processes: int = 1,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """`simulate` under every world and seed, each run with a fresh set of policies.

    The runs are independent (each world and seed starts from `start` with new policies), so with
    `processes` > 1 they run side by side in that many fresh Python processes (spawned, not forked:
    the parent holds TensorFlow's threads), each with one thread for BLAS, OpenMP and TensorFlow.
    A run gives the rows it gives in this process with the same thread counts; with one BLAS thread
    instead of the machine's, EASE's refit can round differently in float32 and flip a near tie (on
    ml-1m-half: 68 of 274 simulation metrics moved, by at most 0.0004, no verdict changed).
    `make_policies` must then be picklable (e.g. `simulation_policies.PolicyFactory`), and so must
    the worlds; a process receives them, `start` and `popularity` once.

    Returns:
        (every run's per-round rows with columns `hidden` (the world's name) and `seed` added, in world then
        seed order; seconds per world: with processes, the sum of its runs' seconds in their processes).
    """
    if processes < 1:
        raise ValueError(f"simulation.processes must be at least 1, got {processes}")
    runs = [(name, seed) for name in worlds for seed in seeds]
    shared = _Runs(make_policies, dict(worlds), start, popularity)
    if processes == 1 or len(runs) == 1:
        results = [shared.run(name, seed, rounds, k) for name, seed in runs]
    else:
        context = multiprocessing.get_context("spawn")
        # one thread per process for BLAS, OpenMP (LightGBM) and TensorFlow: the processes share the cores
        # (processes that each spin a pool of threads the size of the machine slow one another down);
        # spawned processes read the environment as it is when they start, during the submissions below
        with (
            _environment(ONE_THREAD),
            ProcessPoolExecutor(min(processes, len(runs)), context, _share, (shared,)) as pool,
        ):
            futures = [pool.submit(_run_in_process, name, seed, rounds, k) for name, seed in runs]
            results = [future.result() for future in futures]
    frames, seconds = [], dict.fromkeys(worlds, 0.0)
    for (name, seed), (per_round, run_s) in zip(runs, results, strict=True):
        frames.append(per_round.assign(hidden=name, seed=seed))
        seconds[name] += run_s
    return pd.concat(frames, ignore_index=True), seconds


ONE_THREAD = dict.fromkeys(
    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"),
    "1",
)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]):
    """These environment variables set while the block runs (the previous values back after it)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class _Runs:
    """What every run of `simulate_worlds` reads: its policies' maker, the worlds, the start log, the popularity."""

    make_policies: Callable[[], Mapping[str, Policy]]
    worlds: Mapping[str, AcceptanceModel]
    start: PolicyLog
    popularity: np.ndarray

    def run(self, name: str, seed: int, rounds: int, k: int) -> tuple[pd.DataFrame, float]:
        """One world and seed with fresh policies: its per-round rows and seconds."""
        started = time.perf_counter()
        per_round, _ = simulate(self.make_policies(), self.worlds[name], self.start, rounds, k, seed, self.popularity)
        return per_round, time.perf_counter() - started


_PROCESS_RUNS: list[_Runs] = []  # in a simulation process: the runs its initializer received


def _share(runs: _Runs) -> None:
    """A simulation process's initializer: keep the runs' inputs (the start log locked again, as in the parent)."""
    for matrix in {id(m): m for m in (runs.start.matrix, runs.start.start_matrix) if m is not None}.values():
        _read_only(matrix)
    _PROCESS_RUNS[:] = [runs]


def _run_in_process(name: str, seed: int, rounds: int, k: int) -> tuple[pd.DataFrame, float]:
    return _PROCESS_RUNS[0].run(name, seed, rounds, k)
